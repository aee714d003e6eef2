"""The study report: numbers traceable to the results tables, figures written."""

import json
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
  # Figure 2 from the pairs and the half-size singles (the synthetic table has no 1/3 or 1/4 SNT networks).
  (pairs,) = analysis.size_matched(test)
  assert pairs.k == 2 and len(pairs.groups) == 6
  assert f"| 2 | 1/2 (0.500) | 6 | {100 * pairs.mean:+.1f}% | " in text
  written = json.load(open(directory / "study.json"))["figure2"]
  assert [(e["k"], len(e["groups"])) for e in written] == [(2, 6)]
  assert written[0]["mean"] == pytest.approx(pairs.mean)
  for figure in ("figure2_size_matched.png", "table1_pairs.png", "figure4_loss_vs_budget.png", "figure5_groupings_optimal.png",
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


def _size_matched_rows(group_losses, single_losses):
  """Rows of a table over tasks a, b, c: every group's full-size network (``group_losses``:
  ``{group: {task: loss}}``) and each task's single-task networks (``{(task, size): loss}``)."""
  return ([(tuple(group), 1.0, losses) for group, losses in group_losses.items()]
          + [((task,), size, {task: loss}) for (task, size), loss in single_losses.items()])


def test_size_matched_compares_each_group_with_its_tasks_one_over_k_networks():
  singles = {("a", 0.5): 2.0, ("b", 0.5): 4.0, ("c", 0.5): 1.0,
             ("a", 0.3304): 2.5, ("b", 0.3304): 5.0, ("c", 0.3304): 2.0,
             ("a", 1.0): 1.0, ("b", 1.0): 2.0, ("c", 1.0): 0.5}
  groups = {("a", "b"): {"a": 1.5, "b": 5.0}, ("a", "c"): {"a": 1.0, "c": 1.0},
            ("b", "c"): {"b": 4.0, "c": 1.0}, ("a", "b", "c"): {"a": 2.0, "b": 4.0, "c": 1.0}}
  table = tables.ResultsTable.from_rows(("a", "b", "c"), _size_matched_rows(groups, singles))
  per_k = analysis.size_matched(table)
  assert [entry.k for entry in per_k] == [2, 3]
  pairs, triple = per_k
  # a+b: a 1 - 1.5/2, b 1 - 5/4 (Table 1's entries); a+c: a 0.5, c 0; b+c: 0, 0.
  assert pairs.groups == (("a", "b"), ("a", "c"), ("b", "c"))
  np.testing.assert_allclose(pairs.relative, [0.0, 0.25, 0.0], atol=1e-12)
  # Against the 1/3-SNT networks (measured 0.3304: nominal 1/3), not the half- or full-size ones.
  assert triple.groups == (("a", "b", "c"),)
  np.testing.assert_allclose(triple.relative, [(0.2 + 0.2 + 0.5) / 3], atol=1e-12)
  assert pairs.mean_interval is None and pairs.group_intervals is None


def test_size_matched_leaves_out_group_sizes_without_their_fractional_networks():
  singles = {("a", 0.5): 2.0, ("b", 0.5): 4.0, ("c", 0.5): 1.0, ("a", 0.3): 2.5, ("b", 0.3): 5.0, ("c", 0.3): 2.0}
  groups = {("a", "b"): {"a": 1.5, "b": 5.0}, ("a", "b", "c"): {"a": 2.0, "b": 4.0, "c": 1.0}}
  table = tables.ResultsTable.from_rows(("a", "b", "c"), _size_matched_rows(groups, singles))
  assert [entry.k for entry in analysis.size_matched(table)] == [2]  # 3/10 SNT is not 1/3
  with pytest.raises(tables.TableError, match="0.333-SNT single-task network"):
    analysis.size_matched_relative(table, [("a", "b", "c")])


def test_size_matched_intervals_over_seeds():
  singles = {("a", 0.5): 2.0, ("b", 0.5): 4.0, ("c", 0.5): 1.0}
  groups = {("a", "b"): {"a": 1.5, "b": 5.0}, ("a", "c"): {"a": 1.0, "c": 1.0}}
  base = _size_matched_rows(groups, singles)
  # Three seeds scale the group networks' losses by 0.9, 1.0, 1.1; a network Figure 2 does
  # not read has one replica.
  scales = (0.9, 1.0, 1.1)
  rows = [(tasks, cost, {t: v * (s if len(tasks) > 1 else 1.0) for t, v in losses.items()})
          for s in scales for tasks, cost, losses in base] + [(("a",), 1.0, {"a": 1.0})]
  seeds = [s for s in range(3) for _ in base] + [0]
  replicas = tables.Replicas.from_table(tables.ResultsTable.from_rows(("a", "b", "c"), rows), seeds=seeds)
  (pairs,) = analysis.size_matched(replicas.table, replicas)
  per_seed = np.array([[np.mean([1 - 1.5 * s / 2, 1 - 5 * s / 4]), np.mean([1 - s / 2, 1 - s])] for s in scales])
  np.testing.assert_allclose(pairs.relative, per_seed.mean(axis=0), atol=1e-12)
  half = 4.302652729749464 * per_seed.mean(axis=1).std(ddof=1) / np.sqrt(3)  # t(0.975, 2 dof)
  np.testing.assert_allclose(pairs.mean_interval, (pairs.mean - half, pairs.mean + half), rtol=1e-9)
  low, high = pairs.group_intervals
  assert np.all(low < pairs.relative) and np.all(pairs.relative < high)


def test_figure2_is_drawn_with_its_table(tmp_path):
  singles = {(t, size): loss * (1 + size) for t, loss in (("a", 1.0), ("b", 2.0), ("c", 0.5))
             for size in (0.2, 0.25, 0.3304, 0.5, 1.0)}
  groups = {("a", "b"): {"a": 1.4, "b": 3.1}, ("a", "c"): {"a": 1.6, "c": 0.7}, ("b", "c"): {"b": 2.9, "c": 0.8},
            ("a", "b", "c"): {"a": 1.3, "b": 2.6, "c": 0.75}}
  table = tables.ResultsTable.from_rows(("a", "b", "c"), _size_matched_rows(groups, singles))
  path = tmp_path / "figure2.png"
  report_figures = pytest.importorskip("tg_jax.reporting.figures")
  report_figures.size_matched(analysis.size_matched(table), str(path))
  assert path.stat().st_size > 5000


def test_size_matched_takes_the_single_task_network_nearest_one_over_k():
  # A narrow model's nearest encoder to 1/4 SNT may measure 0.263 (outside tables.SIZE_TOLERANCE); 3/10 SNT
  # is not 1/3 however near, and of 0.263 and 0.231 the nearer counts.
  singles = {("a", 0.263): 2.0, ("b", 0.263): 4.0, ("c", 0.263): 1.0, ("d", 0.231): 3.0, ("d", 0.263): 2.0,
             ("a", 0.2995): 1.0, ("b", 0.2995): 1.0, ("c", 0.2995): 1.0}
  groups = {("a", "b", "c"): {"a": 1.0, "b": 1.0, "c": 1.0}, ("a", "b", "c", "d"): {"a": 1.0, "b": 2.0, "c": 1.0, "d": 1.0}}
  table = tables.ResultsTable.from_rows(("a", "b", "c", "d"), _size_matched_rows(groups, singles))
  (quads,) = analysis.size_matched(table)
  assert quads.k == 4 and quads.single_costs == (0.263,) * 4
  np.testing.assert_allclose(quads.relative, [(0.5 + 0.5 + 0.0 + 0.5) / 4], atol=1e-12)


def test_a_bar_figure_keeps_its_bars_readable_beside_one_enormous_interval():
  # Two seeds' Student-t interval can be a hundred times its bar (the helper-task run's keypoints2d:
  # +1.6% [-128, +130]); the axis follows the bars and the moderate intervals, and says what it cut.
  report_figures = pytest.importorskip("tg_jax.reporting.figures")
  values = np.array([-3.6, -2.2, 1.6])
  lows, highs = np.array([-5.8, -3.7, -128.3]), np.array([-1.5, -0.6, 130.3])
  low, high = report_figures._readable_span(values, lows, highs)
  assert low < -5.8 and -20 < low and 1.6 < high < 20
  assert report_figures._readable_span(values, values - 1, values + 1)[1] > 1.6 + 1 - 1e-12
  assert report_figures._readable_span(-values, -highs, -lows) == pytest.approx((-high, -low))


def test_the_methods_figure_keeps_its_rows_readable_beside_one_network_that_blew_up():
  # The methods study's GradVac: two seeds, one blown up, total 29.5 [-308, +367] among totals of 2.8-3.1.
  report_figures = pytest.importorskip("tg_jax.reporting.figures")
  totals = np.array([2.79, 2.83, 2.95, 3.05, 29.47])
  lows, highs = np.array([2.66, 2.77, 2.86, 2.98, -308.4]), np.array([2.91, 2.90, 3.03, 3.12, 367.4])
  low, high = report_figures._readable_range(totals, lows, highs)
  assert low < 2.66 and high > 3.12 and high - low < 2
  # Without an outlier every total and interval end is shown.
  low, high = report_figures._readable_range(totals[:4], lows[:4], highs[:4])
  assert low < 2.66 and high > 3.12


def test_figure_4_leaves_many_method_networks_to_their_own_figure_and_cuts_a_blown_up_band(tmp_path, monkeypatch):
  # The methods study: twenty all-task method networks (flat lines) would bury the selections, and one
  # blown-up seed's band (GradVac: [-308, +367]) would flatten the axis.
  report_figures = pytest.importorskip("tg_jax.reporting.figures")
  analysis = pytest.importorskip("tg_jax.reporting.analysis")
  budgets = [1.0, 2.0, 3.0]
  methods = {"optimal": [2.95, 2.82, 2.79], "all_task": [2.95, 2.95, 2.95]}
  intervals = {"optimal": [(2.86, 3.03), (2.80, 2.93), (2.78, 2.91)]}
  for index in range(20):
    name = f"method{index} (all tasks)"
    methods[name] = [2.9 + 0.01 * index] * 3
    intervals[name] = [(2.8, 3.0)] * 3
  methods["gradvac (all tasks)"] = [29.5] * 3
  intervals["gradvac (all tasks)"] = [(-308.4, 367.4)] * 3
  drawn = {}
  save = report_figures.plt.Figure.savefig

  def capture(figure, path, *args, **kwargs):
    axes = figure.axes[0]
    drawn["labels"] = [line.get_label() for line in axes.get_lines()]
    drawn["ylim"] = axes.get_ylim()
    drawn["title"] = axes.get_title()
    return save(figure, path, *args, **kwargs)

  monkeypatch.setattr(report_figures.plt.Figure, "savefig", capture)
  comparison = analysis.Comparison(budgets, methods, {}, intervals=intervals)
  report_figures.loss_against_budget(comparison, str(tmp_path / "figure4.png"))
  assert drawn["labels"] == ["optimal", "all_task"]
  assert "21 method networks" in drawn["title"]
  low, high = drawn["ylim"]
  assert low < 2.78 and high > 3.03 and high - low < 2
  # A few method networks keep their lines, and the axis still shows every one.
  few = {name: values for name, values in list(methods.items())[:5]}
  report_figures.loss_against_budget(analysis.Comparison(budgets, few, {}, intervals=intervals),
                                     str(tmp_path / "figure4_few.png"))
  assert len(drawn["labels"]) == 5 and drawn["ylim"][0] < 2.78
