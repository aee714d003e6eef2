"""The training-set sweep's summary: gains of multi-task over single-task networks per size, from
workdirs' tables alone."""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tg_jax.reporting import data_size
from tg_jax.selection import tables

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("a", "b", "c")


def _rows(help_factor):
  """Singles (loss 1, 2, 4), pairs and the all-task network, each task's loss ``help_factor`` times
  its single-task loss when shared."""
  single = dict(zip(TASKS, (1.0, 2.0, 4.0)))
  rows = [((t,), 1.0, {t: single[t]}) for t in TASKS]
  for group in itertools.combinations(TASKS, 2):
    rows.append((group, 1.0, {t: single[t] * help_factor for t in group}))
  rows.append((TASKS, 1.0, {t: single[t] * help_factor ** 2 for t in TASKS}))
  return rows


def _write_workdir(directory, scenes, help_factors):
  """A run of experiments/data_size.py at ``scenes`` training scenes, one seed per help factor."""
  rows, seeds = [], []
  for seed, factor in enumerate(help_factors):
    rows += _rows(factor)
    seeds += [seed] * len(_rows(factor))
  replicas = tables.Replicas.from_table(tables.ResultsTable.from_rows(TASKS, rows), seeds)
  os.makedirs(os.path.join(directory, "results"))
  for split in ("val", "test"):
    tables.write_csv(replicas, os.path.join(directory, "results", f"{split}.csv"))
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump({"data": {"name": "synthetic_scenes", "num_train_scenes": scenes, "views_per_scene": 2}}, f)
  return str(directory)


def test_gains_compare_the_all_task_network_and_the_pairs_with_each_single_task_network():
  table = tables.ResultsTable.from_rows(TASKS, _rows(0.8))
  np.testing.assert_allclose(data_size.gains(table), [[1 - 0.64] * 3, [0.2] * 3], atol=1e-12)
  without_all = tables.ResultsTable.from_rows(TASKS, _rows(0.8)[:-1])
  assert np.isnan(data_size.gains(without_all)[0]).all()


def test_sweep_report_figure_and_intervals(tmp_path):
  # Sharing helps less as data grows: factor 0.8 (2000 scenes: 0.9), seeds 0.05 apart.
  workdirs = [_write_workdir(tmp_path / "big", 2000, (0.85, 0.9, 0.95)),
              _write_workdir(tmp_path / "small", 250, (0.75, 0.8, 0.85))]
  path = data_size.write(workdirs, str(tmp_path / "out"))
  small, big = data_size.sweep(workdirs)
  assert (small.examples, big.examples) == (500, 4000)  # ordered by size: scenes x 2 views
  per_seed = np.array([1 - f for f in (0.75, 0.8, 0.85)])  # the pairs' gain for every task, per seed
  half = 4.302652729749464 * per_seed.std(ddof=1) / np.sqrt(3)  # t(0.975, 2 dof)
  np.testing.assert_allclose(small.intervals[0][1], 0.2 - half, rtol=1e-9)
  np.testing.assert_allclose(small.mean_intervals[1][1], 0.2 + half, rtol=1e-9)
  text = open(path).read()
  assert f"| 500 | pairs | +20.0% [{100 * (0.2 - half):+.1f}, {100 * (0.2 + half):+.1f}]* |" in text
  assert "| 4000 | all tasks |" in text
  written = json.load(open(tmp_path / "out" / "data_size.json"))
  assert [p["examples"] for p in written["points"]] == [500, 4000]
  assert os.path.getsize(tmp_path / "out" / data_size.FIGURE) > 5000


def test_sweep_refuses_two_runs_of_one_size_and_runs_of_other_data(tmp_path):
  first = _write_workdir(tmp_path / "one", 500, (0.8, 0.9))
  second = _write_workdir(tmp_path / "two", 500, (0.8, 0.9))
  with pytest.raises(tables.TableError, match="same training-set size"):
    data_size.sweep([first, second])
  with open(os.path.join(second, "config.json"), "w") as f:
    json.dump({"data": {"name": "taskonomy"}}, f)
  with pytest.raises(tables.TableError, match="this run's data is 'taskonomy'"):
    data_size.sweep([second])


def test_command_reports_a_missing_workdir_in_one_line_without_jax(tmp_path):
  run = subprocess.run([sys.executable, "-m", "tg_jax.data_size", f"--workdirs={tmp_path}", f"--out={tmp_path}/out"],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert run.returncode == 2 and "config.json" in run.stderr and "Traceback" not in run.stderr
  code = ("import sys, tg_jax.data_size, tg_jax.reporting.data_size; "
          "print([m for m in ('jax', 'tensorflow', 'flax') if m in sys.modules])")
  imported = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert imported.stdout.strip() == "[]", imported.stdout + imported.stderr
