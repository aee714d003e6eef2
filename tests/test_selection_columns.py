"""Column generation for HOA's groups (selection/columns.py): against the exact selector on listed
groups and brute force, its stated gap, and its place in study.run and tg_jax.select."""

import itertools
import subprocess
import sys

import numpy as np
import pytest

from tg_jax.selection import columns, hoa, selector, study, synthetic, tables

# HiGHS solves to ~1e-9 (relative); sums of a few losses near 1 differ from re-summed ones by less.
TOLERANCE = 1e-6


def _check_against_optimum(found, optimum):
  # The stated gap bounds the distance to the optimum over every group; nothing beats the optimum.
  assert found.objective >= optimum.objective - TOLERANCE
  assert (found.objective - optimum.objective) / found.objective <= found.gap + TOLERANCE
  assert found.cost <= found.budget + selector.COST_TOLERANCE


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_exact_selector_on_listed_groups_within_its_gap(seed):
  measured = synthetic.random_table(7, seed=seed, max_order=2)
  budgets = [1.0, 2.0, 2.5, 3.0, 4.0]
  objective = selector.Objective(weights={"task1": 2.0}, caps={"task3": 0.6})
  exact = selector.select_many(hoa.predict(measured), budgets, objective)
  table, found = columns.select_many(measured, budgets, objective)
  for solution, optimum in zip(found, exact):
    _check_against_optimum(solution, optimum)
    assert solution.method == columns.COLUMN_GENERATION
  # Generated rows hold HOA's predicted losses.
  pair = hoa.pair_losses(measured)
  for row in range(measured.num_networks, table.num_networks):
    group = tuple(sorted(table.task_names.index(t) for t in table.network_tasks[row]))
    np.testing.assert_allclose(table.losses[row], hoa.predict_group(pair, group))


def test_matches_brute_force_on_four_tasks():
  measured = synthetic.random_table(4, seed=3, max_order=2)
  listed = hoa.predict(measured)
  _, found = columns.select_many(measured, [1.0, 1.5, 2.0, 3.0])
  for solution in found:
    best = min(np.sum(np.min(listed.losses[list(rows)], axis=0))
               for size in range(1, 7) for rows in itertools.combinations(range(listed.num_networks), size)
               if listed.costs[list(rows)].sum() <= solution.budget + selector.COST_TOLERANCE
               and np.isfinite(listed.losses[list(rows)]).any(axis=0).all())
    assert best - TOLERANCE <= solution.objective <= best / (1 - solution.gap) + TOLERANCE


def _all_group_gains(scores, prices):
  groups = [g for size in range(scores.min_size, scores.max_size + 1)
            for g in itertools.combinations(range(scores.num_tasks), size)]
  return {frozenset(g): float(np.sum(np.maximum(prices[list(g)] - scores.scores(g)[list(g)], 0.0))) for g in groups}


@pytest.mark.parametrize("seed,max_group_size", [(0, None), (1, 5)])
def test_exact_pricing_finds_the_best_group_of_every_listed_one(seed, max_group_size):
  measured = synthetic.random_table(9, seed=seed, max_order=2)
  scores = columns.pair_scores(measured, selector.Objective(caps={"task2": 0.3}), max_group_size)
  rng = np.random.default_rng(seed)
  prices = scores.pair.sum(axis=1) / 8 * rng.uniform(0.9, 1.2, 9)        # about each task's mean score
  gains = _all_group_gains(scores, prices)
  best = max(gains.values())
  above, found, nodes = scores.best_gain(prices, 0.5 * best)
  assert above == pytest.approx(best, rel=1e-12) and 0 < nodes < 2 ** 9
  assert found and all(gains[g] == pytest.approx(gain, rel=1e-12) and gain > 0.5 * best for g, gain in found.items())
  # Nothing above the threshold: the threshold is the bound, and nothing is found.
  assert scores.best_gain(prices, 1.01 * best)[:2] == (1.01 * best, {})
  assert scores.best_gain(prices, 0.5 * best, node_limit=3)[0] is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_lagrangian_bound_is_below_the_optimum_at_any_prices(seed):
  measured = synthetic.random_table(7, seed=seed, max_order=2)
  scores = columns.pair_scores(measured)
  pool = columns._Pool(selector.Objective().scores(measured), measured.costs, scores)
  gains_at = lambda prices: max(_all_group_gains(scores, prices).values())
  rng = np.random.default_rng(seed)
  budgets = [1.0, 2.0, 2.5, 4.0]
  for budget, optimum in zip(budgets, selector.select_many(hoa.predict(measured), budgets)):
    for _ in range(5):
      prices = rng.uniform(0.0, 2.0, 7) * measured.losses[np.isfinite(measured.losses)].max()
      assert pool.lagrangian_bound(budget, prices, gains_at(prices)) <= optimum.objective + TOLERANCE


@pytest.mark.parametrize("seed", [0, 3])
def test_exact_pricing_proves_integer_budgets_within_the_bound_tolerance(seed):
  # Under HOA the relaxation over every group is integral at these budgets, so the stated gap is the
  # Lagrangian bound's tolerance; it still never claims more than the truth.
  measured = synthetic.random_table(10, seed=seed, max_order=2)
  budgets = [1.0, 2.0, 3.0, 4.0, 5.0]
  exact = selector.select_many(hoa.predict(measured), budgets)
  _, found = columns.select_many(measured, budgets)
  for solution, optimum in zip(found, exact):
    _check_against_optimum(solution, optimum)
    assert solution.objective == pytest.approx(optimum.objective, rel=TOLERANCE)
    assert solution.gap <= columns.BOUND_TOLERANCE + TOLERANCE


def test_past_the_node_limit_the_bound_falls_back_to_the_relaxed_columns(monkeypatch):
  measured = synthetic.random_table(8, seed=1, max_order=2)
  budgets = [2.0, 3.0]
  exact = selector.select_many(hoa.predict(measured), budgets)
  _, priced = columns.select_many(measured, budgets)
  monkeypatch.setattr(columns, "PRICING_NODE_LIMIT", 1)
  messages = []
  _, relaxed = columns.select_many(measured, budgets, progress=messages.append)
  assert all("bound from relaxed columns" in message for message in messages), messages
  for fallback, solution, optimum in zip(relaxed, priced, exact):
    _check_against_optimum(fallback, optimum)
    assert fallback.gap > solution.gap


def test_groups_stay_within_the_largest_size_and_budgets_below_any_cover_are_explained():
  measured = synthetic.random_table(8, seed=2, max_order=2)
  exact = selector.select_many(hoa.predict(measured, max_order=4), [2.0, 3.0], infeasible="explain")
  table, found = columns.select_many(measured, [0.5, 2.0, 3.0], max_group_size=4, infeasible="explain")
  assert isinstance(found[0], selector.NoFeasibleSolution) and "cheapest" in str(found[0])
  for solution, optimum in zip(found[1:], exact):
    _check_against_optimum(solution, optimum)
    assert max(len(table.network_tasks[r]) for r in solution.networks) <= 4
  with pytest.raises(selector.NoFeasibleSolution):
    columns.select_many(measured, [0.5], max_group_size=4)


def test_study_generates_hoa_groups_when_they_are_too_many_to_list(monkeypatch):
  monkeypatch.setattr(hoa, "MAX_PREDICTED_GROUPS", 100)
  measured = synthetic.random_table(8, seed=0, max_order=2)     # 219 groups of 3+
  with pytest.raises(ValueError, match="lists 219 groups.*--max_group_size=3"):
    hoa.predict(measured)
  with pytest.raises(ValueError, match="lists 219 groups"):
    study.run(measured, predict="surrogate", budgets=[4.0])
  result = study.run(measured, predict="hoa", budgets=[2.0, 4.0], random_samples=10)
  monkeypatch.setattr(hoa, "MAX_PREDICTED_GROUPS", 1000)
  listed = study.run(measured, predict="hoa", budgets=[2.0, 4.0], random_samples=10)
  for solution, optimum in zip(result.solutions, listed.solutions):
    assert solution.method == columns.COLUMN_GENERATION and optimum.method == selector.BRANCH_AND_BOUND
    assert optimum.objective - TOLERANCE <= solution.objective <= optimum.objective / (1 - solution.gap) + TOLERANCE
  assert result.prediction_compute.trainings == listed.prediction_compute.trainings


def test_command_line_prints_each_budget_s_gap_for_twenty_tasks(tmp_path):
  path = tmp_path / "pairs.csv"
  tables.write_csv(synthetic.random_table(20, seed=1, max_order=2), str(path))
  run = subprocess.run([sys.executable, "-m", "tg_jax.select", f"--results={path}", "--predict=hoa",
                        "--budgets=2,4", "--random_samples=10"], capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stderr
  lines = [line for line in run.stdout.splitlines() if line.startswith("budget ")]
  assert len(lines) == 2 and all(f"({columns.COLUMN_GENERATION}, gap " in line for line in lines), run.stdout
