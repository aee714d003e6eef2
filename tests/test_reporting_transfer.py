"""Table 3 and Figure 3 on the numpy side: transfer affinities measured or read from a CSV, their
correlation with the multi-task affinity, and the report sections (no training)."""

import os

import numpy as np
import pytest
from scipy import stats

from tg_jax import records
from tg_jax.reporting import report
from tg_jax.reporting import transfer
from tg_jax.selection import tables
from tg_jax.selection.tables import TableError

TASKS = ("a", "b", "c")
# Pairs help: Table 2's symmetric affinities are a+b 0.4, a+c 0.3, b+c 0.2 (1 - pair loss / half-size loss).
ROWS = [
    (("a",), 0.5, {"a": 1.0}), (("b",), 0.5, {"b": 1.0}), (("c",), 0.5, {"c": 1.0}),
    (("a",), 1.0, {"a": 0.9}), (("b",), 1.0, {"b": 0.9}), (("c",), 1.0, {"c": 0.9}),
    (("a", "b"), 1.0, {"a": 0.6, "b": 0.6}), (("a", "c"), 1.0, {"a": 0.7, "c": 0.7}),
    (("b", "c"), 1.0, {"b": 0.8, "c": 0.8}), (("a", "b", "c"), 1.0, {"a": 0.62, "b": 0.66, "c": 0.74}),
]
# Rows: the task measured; columns: the task whose representation it uses. Symmetric: a+b 0.1,
# a+c 0.2, b+c 0.35; "d" is a task the study does not have.
CSV = "\ufefftask,a,b,c,d\na,,0.05,0.3,1\nb,0.15,,0.4,1\nc,0.1,0.3,,1\nd,1,1,1,\n"


def _write(path, text):
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return str(path)


def test_csv_reads_a_square_matrix_and_keeps_the_study_tasks_in_order(tmp_path):
  found = transfer.read_csv(_write(tmp_path / "t.csv", CSV)).restricted_to(("c", "a", "b"))
  assert found.task_names == ("c", "a", "b") and found.replicates.shape == (1, 3, 3) and found.seeds == ()
  np.testing.assert_array_equal(found.matrix, [[np.nan, 0.1, 0.3], [0.3, np.nan, 0.05], [0.4, 0.15, np.nan]])
  assert found.symmetric()[0, 1, 2] == pytest.approx((0.05 + 0.15) / 2)
  assert found.intervals() is None  # one replicate


@pytest.mark.parametrize("text, message", [
    ("task\n", "header must be 'task,<task>,<task>"),
    ("task,a,b\na,,1\nc,1,\n", "must name the header's tasks"),
    ("task,a,b\na,,x\nb,1,\n", "line 2, column 'b': 'x' is not a number"),
    ("task,a,b\na,,1,2\nb,1,\n", "line 2: 3 values for 2 tasks"),
])
def test_bad_csv_names_the_problem(tmp_path, text, message):
  with pytest.raises(TableError, match=message):
    transfer.read_csv(_write(tmp_path / "bad.csv", text))


def test_a_csv_without_a_study_task_names_it(tmp_path):
  found = transfer.read_csv(_write(tmp_path / "t.csv", "task,a,b\na,,1\nb,1,\n"))
  with pytest.raises(TableError, match="no task c; their tasks: a, b"):
    found.restricted_to(TASKS)
  with pytest.raises(TableError, match="cannot be read"):
    transfer.read_csv(str(tmp_path / "absent.csv"))


def _record(tasks, seed, test, size=1.0):
  name = records.Network(tuple(tasks), size, seed=seed).name
  return records.NetworkRecord(name=name, tasks=tuple(tasks), size=size, method="", cost=size, status=records.TRAINED,
                               best_step=1, val=test, test=test, esa=test, val_peak=test,
                               val_peak_step=dict.fromkeys(test, 1), improvement_over_constant={}, seed=seed)


def test_measured_affinity_is_one_minus_the_transfer_loss_over_the_targets_own_per_seed():
  singles = [_record((t,), seed, {t: 0.5 + 0.1 * i + 0.01 * seed}) for seed in (0, 1) for i, t in enumerate(TASKS)]
  methods = {}
  for seed in (0, 1):
    for i, target in enumerate(TASKS):
      for j, origin in enumerate(TASKS):
        if i != j:
          name = f"{target}:from_{origin}" + (f"#{seed}" if seed else "")
          methods[name] = {"method": f"from_{origin}", "tasks": [target], "size": 1.0,
                           "test": {target: 0.6 + 0.1 * i + 0.02 * j + 0.01 * seed}, **({"seed": seed} if seed else {})}
  methods["a+b+c:mgda"] = {"method": "mgda", "tasks": list(TASKS), "size": 1.0, "test": dict.fromkeys(TASKS, 0.1)}
  found = transfer.measured(methods, singles, list(TASKS))
  assert found.seeds == (0, 1)
  # Target b (row 1) from c (column 2), seed 1: 1 - (0.6 + 0.1 + 0.04 + 0.01) / (0.5 + 0.1 + 0.01).
  assert found.replicates[1, 1, 2] == pytest.approx(1 - 0.75 / 0.61)
  assert np.all(np.isnan(found.matrix.diagonal()))
  low, high = found.intervals()
  assert np.all(low[~np.eye(3, dtype=bool)] < found.matrix[~np.eye(3, dtype=bool)])
  assert transfer.measured({}, singles, list(TASKS)) is None
  # A missing reference leaves its row unknown, not wrong.
  partial = transfer.measured(methods, [s for s in singles if s.name != "a"], list(TASKS))
  assert np.all(np.isnan(partial.replicates[0, 0])) and np.isfinite(partial.replicates[1, 0, 1])


def test_correlation_is_pearsons_over_the_pairs_with_per_seed_r():
  transfer_values = np.array([0.1, 0.2, 0.35])  # a+b, a+c, b+c
  multitask_values = np.array([0.4, 0.3, 0.2])

  def matrices(values, noise):
    result = np.full((3, 3), np.nan)
    for (i, j), value in zip(((0, 1), (0, 2), (1, 2)), values):
      result[i, j] = result[j, i] = value + noise
    return result

  replicates = np.stack([matrices(transfer_values, n) for n in (-0.01, 0.01)])
  multitask = np.stack([matrices(multitask_values * s, 0) for s in (0.9, 1.1)])
  found = transfer.correlate(transfer.TransferAffinity(TASKS, replicates, (0, 1)), multitask, (0, 1))
  expected = stats.pearsonr(transfer_values, multitask_values)
  assert found.pairs == (("a", "b"), ("a", "c"), ("b", "c"))
  assert found.r == pytest.approx(expected.statistic) and found.p == pytest.approx(expected.pvalue)
  assert found.r < -0.9
  np.testing.assert_allclose(found.replicate_r, [expected.statistic] * 2)
  assert found.transfer_intervals is not None and found.multitask_intervals is not None
  # Seeds that do not match give no per-seed r; two pairs give no r at all.
  assert transfer.correlate(transfer.TransferAffinity(TASKS, replicates, (0, 1)), multitask, (0, 2)).replicate_r is None
  replicates[:, 1, 2] = replicates[:, 2, 1] = np.nan
  assert np.isnan(transfer.correlate(transfer.TransferAffinity(TASKS, replicates, (0, 1)), multitask).r)


def test_report_from_tables_alone_has_table_3_and_figure_3_from_a_csv(tmp_path):
  workdir = tmp_path / "tables"
  os.makedirs(workdir / "results")
  table = tables.ResultsTable.from_rows(TASKS, ROWS)
  for split in ("val", "test"):
    tables.write_csv(table, str(workdir / "results" / f"{split}.csv"))
  csv_path = _write(tmp_path / "taskonomy.csv", CSV)
  text = open(report.write_report(str(workdir), budgets=[1, 2], random_samples=20, transfer_csv=csv_path)).read()
  assert "## Table 3: transfer affinity" in text and "### from taskonomy.csv" in text
  assert "measured (this run)" not in text
  expected = stats.pearsonr([0.1, 0.2, 0.35], [0.4, 0.3, 0.2])
  assert f"Pearson r = {expected.statistic:+.3f}, p = {expected.pvalue:.3g} over 3 pairs" in text
  assert os.path.exists(workdir / "figures" / "figure3_transfer_vs_multitask.png")
  assert os.path.exists(workdir / "figures" / "table3_transfer_csv.png")
  # Without a CSV or a transfer phase, no section.
  assert "Table 3" not in open(report.write_report(str(workdir), budgets=[1], random_samples=20)).read()
