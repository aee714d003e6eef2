"""HOA predictions, the baselines of section 4.3, and the study's JSON result."""

import itertools
import json
import subprocess
import sys
import os

import numpy as np
import pytest

from tg_jax.selection import baselines, hoa, selector, study, synthetic, tables
from tg_jax.selection.tables import TableError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pairs_table():
  return tables.ResultsTable.from_rows(("a", "b", "c"), [
      (("a",), 0.5, {"a": 1.0}), (("b",), 0.5, {"b": 2.0}), (("c",), 0.5, {"c": 3.0}),
      (("a", "b"), 1.0, {"a": 0.9, "b": 2.2}), (("a", "c"), 1.0, {"a": 1.1, "c": 2.7}),
      (("b", "c"), 1.0, {"b": 1.8, "c": 3.3}),
  ])


def test_hoa_predicts_each_task_as_the_mean_of_its_pairs():
  predicted = hoa.predict(pairs_table())
  assert predicted.network_tasks[-1] == ("a", "b", "c")
  np.testing.assert_allclose(predicted.losses[-1], [(0.9 + 1.1) / 2, (2.2 + 1.8) / 2, (2.7 + 3.3) / 2])
  assert predicted.costs[-1] == 1.0
  assert predicted.num_networks == 7


def test_hoa_replaces_measured_higher_order_networks_and_respects_max_order():
  table = synthetic.random_table(5, seed=1)
  predicted = hoa.predict(table, max_order=3)
  orders = [len(t) for t in predicted.network_tasks]
  assert max(orders) == 3 and orders.count(3) == 10
  measured = {table.network_key(r): table.losses[r] for r in range(table.num_networks)}
  for row, tasks in enumerate(predicted.network_tasks):
    if len(tasks) == 3:
      assert not np.allclose(predicted.losses[row], measured[predicted.network_key(row)])


def test_hoa_needs_every_pair():
  table = pairs_table().subset([0, 1, 2, 3, 4])
  with pytest.raises(TableError, match=r"missing: b\+c"):
    hoa.predict(table)


def test_hoa_accuracy_is_none_without_higher_order_networks():
  assert hoa.accuracy(pairs_table()) is None


def test_all_task_and_independent_baselines():
  table = synthetic.random_table(3, seed=0)
  everything = baselines.all_task_network(table, None, 1.0)
  assert [table.network_tasks[r] for r in everything.networks] == [("task0", "task1", "task2")]
  assert baselines.all_task_network(table, None, 0.9) is None
  assert baselines.independent_networks(table, None, 1.0) is None
  halves = baselines.independent_networks(table, None, 1.5)
  assert sorted(table.costs[list(halves.networks)]) == [0.5, 0.5, 0.5]
  fulls = baselines.independent_networks(table, None, 3.0)
  assert sorted(table.costs[list(fulls.networks)]) == [1.0, 1.0, 1.0]


def _maximal_covers(table, budget):
  for size in range(1, table.num_networks + 1):
    for subset in itertools.combinations(range(table.num_networks), size):
      cost = table.costs[list(subset)].sum()
      if cost > budget + 1e-9 or not table.solves[list(subset)].any(axis=0).all():
        continue
      rest = [r for r in range(table.num_networks) if r not in subset]
      if any(cost + table.costs[r] <= budget + 1e-9 for r in rest):
        continue
      yield subset


@pytest.mark.parametrize("seed", range(3))
def test_pessimal_is_the_worst_maximal_cover(seed):
  table = synthetic.random_mixed_cost_table(4, num_networks=9, seed=seed)
  for budget in [1.5, 2.5]:
    covers = list(_maximal_covers(table, budget))
    worst = baselines.pessimal_solution(table, None, budget)
    if not covers:
      assert worst.scored is None
      continue
    expected = max(np.min(table.losses[list(c)], axis=0).sum() for c in covers)
    assert worst.exact and worst.scored.val_loss == pytest.approx(expected)


def test_random_baseline_is_seeded_and_averages_valid_solutions():
  table = synthetic.random_table(4, seed=2)
  first = baselines.random_solutions(table, table, 2.0, samples=200, seed=5)
  again = baselines.random_solutions(table, table, 2.0, samples=200, seed=5)
  assert first == again and first.samples == 200
  best = study.run(table, budgets=[2.0], random_samples=10).solutions[0].val_loss
  worst = baselines.pessimal_solution(table, None, 2.0).scored.val_loss
  assert best <= first.val_loss <= worst


def test_study_json_has_the_documented_shape(tmp_path):
  table = synthetic.random_table(4, seed=4)
  result = json.loads(json.dumps(study.run(table, table, predict="hoa", budgets=[1, 2], random_samples=20).to_json()))
  assert set(result) >= {"solutions", "baselines"}
  solution = result["solutions"][1]
  assert set(solution) >= {"budget", "networks", "assignment", "val_loss", "test_loss"}
  assert set(solution["assignment"]) == set(table.task_names)
  assert all(0 <= i < len(solution["networks"]) for i in solution["assignment"].values())
  assert set(result["baselines"]) == {"all_task", "independent", "random", "pessimal"}


def test_hoa_choice_of_an_untrained_group_has_no_test_loss():
  # Only pairs are trained: a chosen triple is a prediction and has no test loss yet.
  result = study.run(pairs_table(), pairs_table(), predict="hoa", budgets=[1.0], random_samples=5)
  solution = result.solutions[0]
  assert solution.networks == (study.ChosenNetwork(("a", "b", "c"), 1.0, converged=False),)
  assert solution.test_loss is None and solution.untrained == ("a+b+c @ 1 SNT",)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "tg_jax.select", *args], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=120)


def test_command_line_prints_and_writes_json(tmp_path):
  table = synthetic.random_table(4, seed=4)
  tables.write_csv(table, str(tmp_path / "val.csv"))
  tables.write_csv(table, str(tmp_path / "test.csv"))
  out = tmp_path / "selection.json"
  run = _cli(f"--results={tmp_path / 'val.csv'}", f"--test_results={tmp_path / 'test.csv'}", "--predict=hoa",
             "--budgets=1,2", f"--json={out}", "--random_samples=20")
  assert run.returncode == 0, run.stderr
  assert "budget 2 SNT" in run.stdout and "serves" in run.stdout and "random" in run.stdout
  written = json.loads(out.read_text())
  assert [s["budget"] for s in written["solutions"]] == [1.0, 2.0]


def test_command_line_errors_are_one_clear_line(tmp_path):
  (tmp_path / "bad.csv").write_text("tasks,cost,a\na,1,oops\n")
  run = _cli(f"--results={tmp_path / 'bad.csv'}")
  assert run.returncode == 2
  assert run.stderr.strip().startswith("error:") and "line 2, column 'a'" in run.stderr
  assert "Traceback" not in run.stderr
  tables.write_csv(synthetic.random_table(3, seed=0), str(tmp_path / "good.csv"))
  run = _cli(f"--results={tmp_path / 'good.csv'}", "--budgets=1,x")
  assert run.returncode == 2 and "--budgets" in run.stderr
  run = _cli(f"--results={tmp_path / 'good.csv'}", "--budgets=0.5")
  assert run.returncode == 2 and "cheapest that does costs" in run.stderr


def test_selection_never_imports_jax_or_tensorflow():
  code = ("import sys, tg_jax.select, tg_jax.selection.study, tg_jax.selection.synthetic; "
          "print([m for m in ('jax', 'tensorflow', 'flax') if m in sys.modules])")
  run = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
  assert run.stdout.strip() == "[]", run.stdout + run.stderr


def test_infeasible_budgets_are_explained_not_fatal():
  result = study.run(pairs_table(), pairs_table(), budgets=[1.0, 1.5], random_samples=5)
  first, second = result.solutions
  assert first.networks == () and "cheapest that does costs 1.5 SNT" in first.infeasible
  assert second.val_loss is not None
  assert "budget 1 SNT: infeasible" in study.format_text(result)


def capped_table():
  # Task a's own network breaks a cap of 2 on a; only the pair serves a within it.
  return tables.ResultsTable.from_rows(("a", "b"), [
      (("a",), 1.0, {"a": 5.0}), (("b",), 1.0, {"b": 1.0}), (("a", "b"), 1.0, {"a": 1.0, "b": 1.0})])


def test_caps_bind_every_baseline():
  capped = selector.Objective(caps={"a": 2.0})
  result = study.run(capped_table(), capped_table(), budgets=[2.0], random_samples=50, objective=capped)
  entries = {name: entries[0] for name, entries in result.baselines.items()}
  assert entries["independent"] is None                      # a@1 may not serve a
  # Every valid fill holds the pair, which serves both tasks at 1.0; a fill {a, b} breaks the cap.
  assert entries["random"].val_loss == pytest.approx(2.0) and entries["random"].samples == 50
  assert entries["pessimal"].val_loss == pytest.approx(2.0)
  uncapped = study.run(capped_table(), capped_table(), budgets=[2.0], random_samples=50)
  assert uncapped.baselines["independent"][0].val_loss == pytest.approx(6.0)


def test_random_baseline_states_its_standard_error():
  table = synthetic.random_table(4, seed=2)
  sampled = baselines.random_solutions(table, table, 2.0, samples=200, seed=5)
  assert 0 < sampled.val_loss_stderr < 0.1 * sampled.val_loss
  with pytest.raises(ValueError, match="random samples must be >= 0"):
    baselines.random_fills(table, 2.0, samples=-1)


def test_hoa_refuses_to_list_too_many_groups_before_listing_them(monkeypatch):
  # study.run generates them on demand instead (tests/test_selection_columns.py).
  monkeypatch.setattr(hoa, "MAX_PREDICTED_GROUPS", 100)
  table = synthetic.random_table(8, seed=0, max_order=2)     # 219 groups of 3+, 56 of exactly 3
  with pytest.raises(ValueError, match="lists 219 groups.*--max_group_size=3"):
    hoa.predict(table)
  assert max(len(t) for t in hoa.predict(table, max_order=3).network_tasks) == 3


def test_command_line_refuses_ambiguous_flags_in_one_line(tmp_path):
  tables.write_csv(synthetic.random_table(3, seed=0), str(tmp_path / "good.csv"))
  results = f"--results={tmp_path / 'good.csv'}"
  for flag, words in [("--weights=task0=1,task0=2", "'task0' is given twice"),
                      ("--caps=task0=nan", "'task0=nan' is not a number"),
                      ("--random_samples=-1", "--random_samples must be >= 0")]:
    run = _cli(results, flag)
    assert run.returncode == 2 and run.stderr.startswith("error:") and words in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_command_line_states_the_normalisation_fallback_and_reports_progress(tmp_path):
  # Only half-size single-task networks: normalising by "the full single-task network" falls back.
  halves = tables.ResultsTable.from_rows(("a", "b"), [
      (("a",), 0.5, {"a": 1.0}), (("b",), 0.5, {"b": 2.0}), (("a", "b"), 1.0, {"a": 0.9, "b": 2.2})])
  tables.write_csv(halves, str(tmp_path / "val.csv"))
  run = _cli(f"--results={tmp_path / 'val.csv'}", "--normalise=single", "--budgets=1", "--random_samples=5",
             "--progress_after=0")
  assert run.returncode == 0, run.stderr
  assert "no full-size (1 SNT) single-task network for a (by its 0.5 SNT network), b (by its 0.5 SNT" in run.stdout
  assert "selected budget 1 SNT (1 of 1;" in run.stderr
