"""The study report: numbers traceable to the results tables, figures written."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tg_jax.reporting import analysis, report
from tg_jax.selection import study, synthetic, tables

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("study")
  val = synthetic.random_table(4, seed=8)
  rng = np.random.default_rng(1)
  test = tables.ResultsTable(val.task_names, val.network_tasks, val.costs,
                             val.losses * rng.uniform(0.97, 1.03, val.losses.shape))
  esa = tables.ResultsTable(val.task_names, val.network_tasks, val.costs,
                            val.losses * rng.uniform(1.2, 1.6, val.losses.shape))
  for name, table in (("val", val), ("test", test), ("esa", esa)):
    tables.write_csv(table, str(directory / "results" / f"{name}.csv"))
  return directory, val, test, esa


def test_pair_relative_performance_against_half_size_networks():
  table = tables.ResultsTable.from_rows(("a", "b"), [
      (("a",), 0.5, {"a": 2.0}), (("b",), 0.5, {"b": 4.0}), (("a", "b"), 1.0, {"a": 1.5, "b": 5.0})])
  relative = analysis.pair_relative_performance(table)
  assert relative[0, 1] == pytest.approx(0.25) and relative[1, 0] == pytest.approx(-0.25)
  assert np.isnan(relative[0, 0])
  np.testing.assert_allclose(analysis.pair_affinity(relative)[0, 1], 0.0, atol=1e-12)


def test_esa_correlation_is_one_for_proportional_tables():
  val = synthetic.random_table(4, seed=3)
  early = tables.ResultsTable(val.task_names, val.network_tasks, val.costs, val.losses * 1.3)
  correlation = analysis.esa_correlation(val, early)
  assert correlation.pooled == pytest.approx(1.0)
  assert all(r == pytest.approx(1.0) for r in correlation.per_task.values())


def test_report_numbers_trace_to_the_tables(workdir):
  directory, val, test, esa = workdir
  path = report.write_report(str(directory), budgets=[1, 2, 3], random_samples=50)
  text = open(path).read()
  optimal = study.run(val, test, budgets=[1, 2, 3], random_samples=50)
  hoa = study.run(val, test, predict="hoa", budgets=[1, 2, 3], random_samples=50)
  assert "| optimal | " + " | ".join(f"{s.test_loss:.3f}" for s in optimal.solutions) + " |" in text
  assert "| hoa | " + " | ".join(f"{s.test_loss:.3f}" for s in hoa.solutions) + " |" in text
  assert "| esa |" in text and "| random |" in text and "| pessimal |" in text
  assert "HOA prediction error over" in text and "ESA: Pearson r" in text
  for figure in ("table1_pairs.png", "figure4_loss_vs_budget.png", "figure5_groupings_optimal.png",
                 "figure5_groupings_esa.png", "figure5_groupings_hoa.png"):
    assert os.path.getsize(directory / "figures" / figure) > 5000


def test_report_command_explains_a_missing_workdir(tmp_path):
  run = subprocess.run([sys.executable, "-m", "tg_jax.report", f"--workdir={tmp_path}"], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 2 and "results/val.csv" in run.stderr and "Traceback" not in run.stderr


def test_measured_costs_near_nominal_sizes_count_as_those_sizes():
  # Sizes come from measured FLOPs: a half-size network may cost 0.4987 SNT.
  table = tables.ResultsTable.from_rows(("a", "b"), [
      (("a",), 0.4987, {"a": 2.0}), (("b",), 0.4987, {"b": 4.0}), (("a", "b"), 1.0, {"a": 1.5, "b": 5.0})])
  assert analysis.pair_relative_performance(table)[0, 1] == pytest.approx(0.25)


def test_convergence_counts_networks_whose_curves_ended_flat():
  flat = [(25, 1.0), (50, 0.8), (75, 0.7), (100, 0.699)]
  still_falling = [(25, 1.0), (50, 0.8), (75, 0.7), (100, 0.6)]
  result = analysis.convergence({"a": flat, "b": still_falling, "short": [(25, 1.0)]})
  assert (result.networks, result.flat, result.window_start) == (2, 1, 80)
  assert result.largest[0] == "b" and result.largest[1] == pytest.approx(0.1 / 0.6)
  assert analysis.convergence({"short": [(25, 1.0), (50, 0.9)]}) is None


def test_capacity_gaps_compare_the_smallest_single_task_network_with_the_standard_one():
  names = ("a", "b")
  network_tasks = (("a",), ("a",), ("a",), ("b",), ("b",))
  costs = np.array([1.0, 0.5, 0.2, 1.0, 0.5])
  # Per seed: a's 0.2-SNT network is 20-25% worse (resolved over three seeds), b's 0.5-SNT one -5..+5%.
  replicate_losses = [np.array([[1.0, np.inf], [1.1, np.inf], [small_a, np.inf], [np.inf, 2.0], [np.inf, small_b]])
                      for small_a, small_b in ((1.20, 1.9), (1.25, 2.1), (1.22, 2.0))]
  rows = tables.ResultsTable(names, network_tasks * 3, np.tile(costs, 3), np.concatenate(replicate_losses))
  replicas = tables.Replicas.from_table(rows, seeds=[0] * 5 + [1] * 5 + [2] * 5)
  gaps = {gap.task: gap for gap in analysis.capacity_gaps(replicas.table, replicas)}
  assert gaps["a"].size == 0.2 and gaps["a"].relative == pytest.approx(0.67 / 3)
  assert gaps["a"].significant and gaps["a"].interval[0] > 0.1
  assert gaps["b"].size == 0.5 and gaps["b"].relative == pytest.approx(0.0, abs=1e-12)
  assert not gaps["b"].significant
  one_seed = analysis.capacity_gaps(tables.ResultsTable(names, network_tasks, costs, replicate_losses[0]))
  assert [gap.interval for gap in one_seed] == [None, None]
