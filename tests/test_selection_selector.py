"""The selector is exact: it matches exhaustive enumeration and an independent MILP solver."""

import itertools

import numpy as np
import pytest
from scipy import optimize

from tg_jax.selection import hoa, selector, synthetic, tables
from tg_jax.selection.selector import NoFeasibleSolution, Objective


def brute_force(scores, costs, budget):
  """Lowest objective over every subset of networks within budget that serves every task."""
  best = (np.inf, np.inf)
  for size in range(1, len(costs) + 1):
    for subset in itertools.combinations(range(len(costs)), size):
      cost = costs[list(subset)].sum()
      if cost > budget + 1e-9:
        continue
      value = np.min(scores[list(subset)], axis=0).sum()
      if np.isfinite(value) and (value, cost) < best:
        best = (value, cost)
  return best


def milp(scores, costs, budget):
  """The same problem as a mixed-integer programme (HiGHS through scipy), an independent solver.

  Variables: y[i] (network i chosen), x[i, t] (network i serves task t).
  """
  num_networks, num_tasks = scores.shape
  can = np.isfinite(scores)
  pairs = [(i, t) for i in range(num_networks) for t in range(num_tasks) if can[i, t]]
  num_vars = num_networks + len(pairs)
  objective = np.concatenate([np.zeros(num_networks), [scores[i, t] for i, t in pairs]])
  rows, lower, upper = [], [], []
  for t in range(num_tasks):                       # every task served once
    row = np.zeros(num_vars)
    for k, (i, u) in enumerate(pairs):
      if u == t:
        row[num_networks + k] = 1
    rows.append(row), lower.append(1), upper.append(1)
  for k, (i, t) in enumerate(pairs):               # only by a chosen network
    row = np.zeros(num_vars)
    row[num_networks + k], row[i] = 1, -1
    rows.append(row), lower.append(-np.inf), upper.append(0)
  row = np.zeros(num_vars)
  row[:num_networks] = costs
  rows.append(row), lower.append(-np.inf), upper.append(budget + 1e-9)
  result = optimize.milp(objective, constraints=optimize.LinearConstraint(np.array(rows), lower, upper),
                         integrality=np.ones(num_vars), bounds=optimize.Bounds(0, 1))
  return result.fun if result.success else np.inf


@pytest.mark.parametrize("num_tasks", [3, 4, 5, 6])
@pytest.mark.parametrize("seed", range(4))
def test_matches_exhaustive_enumeration_with_mixed_costs(num_tasks, seed):
  table = synthetic.random_mixed_cost_table(num_tasks, num_networks=12, seed=100 * num_tasks + seed)
  for budget in [0.5, 1.0, 1.7, 2.5, 3.3, 5.0]:
    expected_value, expected_cost = brute_force(table.losses, table.costs, budget)
    if not np.isfinite(expected_value):
      with pytest.raises(NoFeasibleSolution):
        selector.select(table, budget)
      continue
    solution = selector.select(table, budget)
    assert solution.objective == pytest.approx(expected_value, rel=1e-12)
    assert solution.cost == pytest.approx(expected_cost)      # ties go to the cheaper set
    assert solution.cost <= budget + 1e-9
    np.testing.assert_allclose(np.min(table.losses[list(solution.networks)], axis=0).sum(), solution.loss)


@pytest.mark.parametrize("seed", range(3))
def test_matches_milp_on_larger_tables(seed):
  table = synthetic.random_mixed_cost_table(8, num_networks=40, seed=seed)
  budgets = [1.5, 2.6, 4.0]
  for budget, solution in zip(budgets, selector.select_many(table, budgets)):
    assert solution.objective == pytest.approx(milp(table.losses, table.costs, budget), rel=1e-7)


def test_matches_milp_on_hoa_tables_with_off_grid_costs():
  # Measured costs are not multiples of 0.5: the relaxation becomes a looser bound, still exact.
  base = synthetic.random_table(6, seed=3, max_order=2)
  predicted = hoa.predict(base)
  rng = np.random.default_rng(0)
  table = tables.ResultsTable(predicted.task_names, predicted.network_tasks,
                              predicted.costs * rng.uniform(0.93, 1.07, predicted.num_networks), predicted.losses)
  for budget in [1.2, 2.0, 3.1]:
    solution = selector.select(table, budget)
    assert solution.objective == pytest.approx(milp(table.losses, table.costs, budget), rel=1e-7)


def test_weights_normalisers_and_caps_match_exhaustive_search():
  table = synthetic.random_mixed_cost_table(5, num_networks=12, seed=7)
  objective = Objective(weights={"t0": 3.0, "t2": 0.5}, normalisers={"t1": 0.4},
                        caps={"t3": float(np.nanmedian(np.where(table.solves[:, 3], table.losses[:, 3], np.nan)))})
  scores = objective.scores(table)
  for budget in [2.0, 3.0, 4.5]:
    expected, _ = brute_force(scores, table.costs, budget)
    if not np.isfinite(expected):
      continue
    solution = selector.select(table, budget, objective)
    assert solution.objective == pytest.approx(expected)
    served_t3 = solution.assignment[3]
    assert table.losses[served_t3, 3] <= objective.caps["t3"]


def test_weights_change_the_choice():
  table = tables.ResultsTable.from_rows(("a", "b"), [
      (("a", "b"), 1.0, {"a": 1.0, "b": 1.0}),
      (("a", "b"), 1.0, {"a": 0.8, "b": 1.3}),
  ])
  assert selector.select(table, 1.0).networks == (0,)
  assert selector.select(table, 1.0, Objective(weights={"a": 5.0})).networks == (1,)


def test_normalised_by_single_task_networks():
  table = tables.ResultsTable.from_rows(("a", "b"), [
      (("a",), 1.0, {"a": 0.5}), (("b",), 1.0, {"b": 2.0}), (("a", "b"), 1.0, {"a": 0.6, "b": 1.9})])
  objective = Objective.normalised_by(table)
  assert objective.normalisers == {"a": 0.5, "b": 2.0}
  assert selector.select(table, 1.0, objective).objective == pytest.approx(0.6 / 0.5 + 1.9 / 2.0)


def test_ties_break_to_lower_cost_then_lower_rows():
  table = tables.ResultsTable.from_rows(("a", "b"), [
      (("a", "b"), 1.0, {"a": 0.5, "b": 0.5}),      # row 0
      (("a", "b"), 0.8, {"a": 0.5, "b": 0.5}),      # row 1: same loss, cheaper
      (("a", "b"), 0.8, {"a": 0.5, "b": 0.5}),      # row 2: identical to row 1
  ])
  assert selector.select(table, 2.0).networks == (1,)


def test_infeasible_budget_names_the_cheapest_cover():
  table = tables.ResultsTable.from_rows(("a", "b", "c"), [
      (("a",), 0.5, {"a": 0.1}), (("b", "c"), 1.0, {"b": 0.1, "c": 0.1}), (("a", "b", "c"), 2.0,
                                                                           {"a": 0.1, "b": 0.1, "c": 0.1})])
  with pytest.raises(NoFeasibleSolution) as info:
    selector.select(table, 1.2)
  message = str(info.value)
  assert "budget 1.2" in message and "costs 1.5 SNT" in message and "a @ 0.5 SNT" in message and "b+c @ 1 SNT" in message


def test_caps_that_no_network_meets():
  table = tables.ResultsTable.from_rows(("a", "b"), [(("a", "b"), 1.0, {"a": 0.5, "b": 0.5})])
  with pytest.raises(NoFeasibleSolution, match=r"task\(s\) \['a'\].*caps"):
    selector.select(table, 1.0, Objective(caps={"a": 0.1}))


def test_objective_rejects_unknown_tasks_and_bad_weights():
  table = synthetic.random_mixed_cost_table(3, 5, seed=0)
  with pytest.raises(ValueError, match="unknown task 'zz'"):
    selector.select(table, 2.0, Objective(weights={"zz": 1.0}))
  with pytest.raises(ValueError, match="> 0"):
    selector.select(table, 2.0, Objective(weights={"t0": -1.0}))


def test_assignment_serves_each_task_by_its_best_chosen_network():
  table = synthetic.random_mixed_cost_table(5, 12, seed=11)
  solution = selector.select(table, 3.0)
  for task, row in enumerate(solution.assignment):
    assert row in solution.networks
    assert table.losses[row, task] == np.min(table.losses[list(solution.networks), task])


@pytest.mark.parametrize("num_tasks", [3, 5, 6])
@pytest.mark.parametrize("seed", range(3))
def test_integer_programme_matches_brute_force_and_the_branch_and_bound(num_tasks, seed):
  table = synthetic.random_mixed_cost_table(num_tasks, num_networks=12, seed=100 * num_tasks + seed)
  budgets = [0.5, 1.0, 1.7, 2.5, 3.3, 5.0]
  by_programme = selector.select_many(table, budgets, method=selector.INTEGER_PROGRAMME, infeasible="explain")
  by_search = selector.select_many(table, budgets, method=selector.BRANCH_AND_BOUND, infeasible="explain")
  for budget, programme, search in zip(budgets, by_programme, by_search):
    expected_value, expected_cost = brute_force(table.losses, table.costs, budget)
    if not np.isfinite(expected_value):
      assert isinstance(programme, NoFeasibleSolution) and isinstance(search, NoFeasibleSolution)
      continue
    # HiGHS proves optimality to a relative gap of 1e-9 with feasibility tolerances of 1e-7.
    assert programme.objective == pytest.approx(expected_value, rel=1e-6)
    assert programme.objective == pytest.approx(search.objective, rel=1e-6)
    assert programme.cost <= budget + 1e-9 and programme.gap == 0.0
    assert programme.method == selector.INTEGER_PROGRAMME and search.method == selector.BRANCH_AND_BOUND


def test_tables_past_the_branch_and_bound_go_to_the_integer_programme():
  table = synthetic.random_table(selector.BRANCH_AND_BOUND_MAX_TASKS + 2, seed=0, max_order=2)
  (solution,), (stats,) = selector.select_many(table, [9.5], return_stats=True)
  assert stats.method == solution.method == selector.INTEGER_PROGRAMME and solution.gap == 0.0
  assert solution.cost <= 9.5 + 1e-9
  with pytest.raises(NoFeasibleSolution, match="cheapest that does costs"):
    selector.select(table, 8.5)
