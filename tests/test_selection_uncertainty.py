"""Seed replicas in results tables, and the uncertainty of a selection (numpy only)."""

import dataclasses

import numpy as np
import pytest

from tg_jax.selection import selector, study, synthetic, tables, uncertainty

SEEDED_CSV = "tasks,cost,seed,a,b\na,1,0,0.5,\na,1,1,0.7,\nb,1,1,,0.2\nb,1,0,,0.4\na+b,1,0,0.3,0.3\n"


def test_seed_column_groups_replicas_and_the_mean_is_what_selection_sees():
  replicas = tables.parse_replicas(SEEDED_CSV)
  assert replicas.seeds == ((0, 1), (0, 1), (0,))
  np.testing.assert_allclose(replicas.table.losses, [[0.6, np.inf], [np.inf, 0.3], [0.3, 0.3]])
  assert np.isnan(replicas.samples[2, 1]).all()  # a+b has one replica
  assert tables.parse_csv(SEEDED_CSV).losses.tolist() == replicas.table.losses.tolist()
  np.testing.assert_array_equal(tables.parse_replicas(tables.to_csv(replicas)).samples, replicas.samples)


def test_a_table_without_seeds_is_one_replica_per_row_exactly_as_before():
  table = synthetic.random_table(4, seed=1)
  text = tables.to_csv(table)
  replicas = tables.parse_replicas(text)
  assert not replicas.replicated and replicas.table.losses.tolist() == table.losses.tolist()
  assert tables.to_csv(replicas) == text
  assert study.format_text(study.run(table, table, random_samples=5)) == study.format_text(
      study.run(replicas.table, replicas.table, random_samples=5))


def test_bad_seed_cells_name_the_line():
  with pytest.raises(tables.TableError, match="line 2, column 'seed'"):
    tables.parse_replicas("tasks,cost,seed,a\na,1,x,0.5\n")
  with pytest.raises(tables.TableError, match="seed"):
    tables.parse_replicas("tasks,cost,seed,a\na,1,0,0.5\na,1,0,0.6\n")


def test_batched_selection_equals_the_exact_selector():
  table = synthetic.random_table(5, seed=3)
  budgets = study.default_budgets(table)
  rng = np.random.default_rng(0)
  losses = table.losses[None] * (1 + rng.normal(0, 0.05, (50,) + table.losses.shape))
  batched = uncertainty.BatchSelector(table.network_tasks, table.costs, table.task_names).select(losses, budgets)
  for resample, per_budget in zip(losses, batched):
    exact = selector.select_many(dataclasses.replace(table, losses=resample), budgets, infeasible="explain")
    for solution, rows in zip(exact, per_budget):
      served = None if rows is None else set(selector.assign(resample, rows))
      assert served == (None if isinstance(solution, selector.NoFeasibleSolution) else set(solution.assignment))


def _replicas(truth, samples):
  return tables.Replicas(dataclasses.replace(truth, losses=samples.mean(axis=1)),
                         tuple(tuple(range(samples.shape[1])) for _ in range(truth.num_networks)), samples)


def _noisy_replicas(truth, num_seeds, rng, seed_noise=0.05, evaluation_noise=0.005):
  """Validation and test replicas of known losses: a seed's training noise is shared by its two
  evaluations (they are one trained network), each evaluation adds its own."""
  trained = rng.normal(0, seed_noise, (truth.num_networks, num_seeds, truth.num_tasks))
  return [_replicas(truth, truth.losses[:, None, :] * (1 + trained + rng.normal(0, evaluation_noise, trained.shape)))
          for _ in range(2)]


def test_intervals_of_the_chosen_grouping_cover_the_truth_at_their_level():
  covered, total = 0, 0
  for draw in range(50):
    rng = np.random.default_rng(draw)
    truth = synthetic.random_table(5, seed=draw, noise=0.0, pair_spread=0.03)
    val, test = _noisy_replicas(truth, 3, rng)
    result = study.run(val.table, test.table, replicas=(val, test), budgets=[1.5, 2.5, 3.5], bootstrap=200,
                       random_samples=20, with_baselines=False, seed=draw)
    rows = {truth.network_key(r): r for r in range(truth.num_networks)}
    for solution in result.solutions:
      served = [rows[solution.networks[solution.assignment[t]].key] for t in truth.task_names]
      true_total = truth.losses[served, np.arange(truth.num_tasks)].sum()
      low, high = solution.uncertainty.test_loss_interval
      covered += low <= true_total <= high
      total += 1
  # 95% intervals; the selection's winner's curse (val and test share each seed's noise) would
  # push an uncorrected interval's coverage to about 60% here.
  assert 0.90 <= covered / total <= 0.99, covered / total


def test_probability_alternatives_and_paired_differences():
  truth = synthetic.random_table(4, seed=5)
  val, test = _noisy_replicas(truth, 4, np.random.default_rng(1), seed_noise=0.01)
  result = study.run(val.table, test.table, replicas=(val, test), budgets=[1.0, 2.0], bootstrap=200,
                     random_samples=50)
  first, second = result.solutions
  assert 0 < second.uncertainty.probability_optimal <= 1
  assert sum(a.probability for a in second.uncertainty.alternatives) <= 1 - second.uncertainty.probability_optimal + 1e-9
  # At budget 1 the grouping is the all-task network: no difference with itself is reported.
  assert "all_task" not in {d.baseline for d in first.uncertainty.differences}
  versus = {d.baseline: d for d in second.uncertainty.differences}
  assert set(versus) >= {"all_task", "random"}
  for difference in versus.values():
    assert difference.interval[0] <= difference.difference <= difference.interval[1]
  written = second.to_json()
  assert set(written) >= {"val_loss_interval", "test_loss_interval", "probability_optimal", "alternatives"}
  assert "[" in study.format_text(result) and "probability optimal" in study.format_text(result)


def test_one_replica_gives_no_interval_and_says_so():
  table = synthetic.random_table(3, seed=2)
  replicas = tables.Replicas.from_table(table)
  result = study.run(table, table, replicas=(replicas, replicas), budgets=[2.0], bootstrap=50, random_samples=5)
  assert result.solutions[0].uncertainty.test_loss_interval is None
  assert "one replica" in study.format_text(result)


def test_risk_quantile_prefers_the_reliable_network():
  # Two networks serve a: one better on average but erratic, one a little worse and steady.
  rows = [(("a",), 1.0, s, {"a": v}) for s, v in enumerate((0.30, 0.70, 0.32))]
  rows += [(("a",), 0.5, s, {"a": v}) for s, v in enumerate((0.46, 0.45, 0.46))]
  flat = tables.ResultsTable.from_rows(("a",), [(t, c, l) for t, c, _, l in rows])
  replicas = tables.Replicas.from_table(flat, [s for _, _, s, _ in rows])
  by_mean = study.run(replicas.table, replicas.table, replicas=(replicas, replicas), budgets=[1.0], bootstrap=20,
                      random_samples=5)
  by_risk = study.run(replicas.table, replicas.table, replicas=(replicas, replicas), budgets=[1.0], bootstrap=20,
                      random_samples=5, risk_quantile=0.9)
  assert by_mean.solutions[0].networks[0].cost == 1.0 and by_risk.solutions[0].networks[0].cost == 0.5


def test_with_per_example_losses_the_intervals_cover_the_evaluation_sets_own_noise():
  covered, naive_covered, total = 0, 0, 0
  num_examples = 40
  for draw in range(40):
    rng = np.random.default_rng(draw)
    truth = synthetic.random_table(4, seed=draw, noise=0.0, pair_spread=0.03)
    trained = rng.normal(0, 0.03, (truth.num_networks, 3, 1, truth.num_tasks))
    # Each split is one fixed set of examples, as hard for every network: its mean difficulty is off
    # 1 by sampling noise that every network and replica shares.
    split_losses = []
    for _ in range(2):
      difficulty = rng.gamma(4.0, 0.25, (1, 1, num_examples, truth.num_tasks))
      split_losses.append(truth.losses[:, None, None, :] * (1 + trained) * difficulty)
    val, test = (_replicas(truth, losses.mean(axis=2)) for losses in split_losses)
    examples = uncertainty.Examples(*(np.where(np.isfinite(l), l, np.nan) for l in split_losses))
    options = dict(budgets=[1.5, 2.5], bootstrap=200, random_samples=10, with_baselines=False, seed=draw)
    result = study.run(val.table, test.table, replicas=(val, test), examples=examples, **options)
    naive = study.run(val.table, test.table, replicas=(val, test), **options)
    rows = {truth.network_key(r): r for r in range(truth.num_networks)}
    for solution, seeds_only in zip(result.solutions, naive.solutions):
      served = [rows[solution.networks[solution.assignment[t]].key] for t in truth.task_names]
      true_total = truth.losses[served, np.arange(truth.num_tasks)].sum()
      low, high = solution.uncertainty.test_loss_interval
      covered += low <= true_total <= high
      low, high = seeds_only.uncertainty.test_loss_interval
      naive_covered += low <= true_total <= high
      total += 1
  assert 0.90 <= covered / total <= 0.99, (covered / total, naive_covered / total)
  assert naive_covered / total < 0.8  # seeds alone cannot see the shared evaluation noise
