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
