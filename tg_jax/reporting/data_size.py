"""Multi-task against single-task learning as the training set grows (``experiments/data_size.py``).

numpy + matplotlib, from the results tables of one workdir per training-set size. Per size and task:
how much lower the task's test loss is in the all-task network, and on average in its pairs, than in
its own single-task network of the same size (1 - multi-task loss / single-task loss; positive:
sharing helps), with 95% intervals over seeds where every network involved has 2+ replicas.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

from tg_jax import workdir as workdir_lib
from tg_jax.reporting import figures
from tg_jax.selection import tables, uncertainty
from tg_jax.selection.tables import ResultsTable, TableError

FULL_COST = 1.0


def gains(table: ResultsTable) -> np.ndarray:
  """``[2, tasks]``: per task, 1 - its loss in the full-size all-task network / in its full-size
  single-task network (row 0), and the mean over its full-size pairs of the same (row 1); NaN where
  a network is missing."""
  full = {frozenset(tasks): row for row, tasks in enumerate(table.network_tasks)
          if tables.has_size(table.costs[row], FULL_COST)}
  names = table.task_names
  result = np.full((2, len(names)), np.nan)
  everything = full.get(frozenset(names))
  for j, task in enumerate(names):
    single = full.get(frozenset([task]))
    if single is None:
      continue
    reference = table.losses[single, j]
    if everything is not None:
      result[0, j] = 1.0 - table.losses[everything, j] / reference
    pairs = [full[frozenset([task, other])] for other in names if other != task and frozenset([task, other]) in full]
    if pairs:
      result[1, j] = np.mean(1.0 - table.losses[pairs, j] / reference)
  return result


@dataclasses.dataclass(frozen=True)
class Point:
  """One training-set size.

  Attributes:
    workdir: where its tables are.
    examples: training examples.
    task_names: the tables' tasks.
    gains: ``gains`` of the test table (means over seed replicas).
    intervals: 95% intervals of ``gains`` over seeds (lows, highs), or None with one replica.
    mean_intervals: 95% intervals of the mean over tasks of each row of ``gains`` (``[2]`` lows, highs).
  """

  workdir: str
  examples: int
  task_names: tuple[str, ...]
  gains: np.ndarray
  intervals: Optional[tuple[np.ndarray, np.ndarray]] = None
  mean_intervals: Optional[tuple[np.ndarray, np.ndarray]] = None

  @property
  def means(self) -> np.ndarray:
    """``[2]``: the all-task and pair gains' means over tasks."""
    return np.nanmean(self.gains, axis=1)


def training_examples(config: dict, where: str) -> int:
  """The training-set size of a run of ``experiments/data_size.py`` from its ``config.json``."""
  data = config.get("data", {})
  if "num_train_scenes" not in data or "views_per_scene" not in data:
    raise TableError(f"{where}: the training-set sweep reads data.num_train_scenes and data.views_per_scene "
                     f"(synthetic_scenes); this run's data is {data.get('name')!r}")
  return int(data["num_train_scenes"]) * int(data["views_per_scene"])


def point(workdir: str) -> Point:
  """One size's point from a workdir of ``experiments/data_size.py``."""
  paths = workdir_lib.Workdir(workdir)
  config = workdir_lib.read_json(paths.config)
  if config is None:
    raise TableError(f"{workdir!r} has no config.json; point --workdirs at runs of experiments/data_size.py")
  study_tables = workdir_lib.load_study(paths)
  values = gains(study_tables.test)
  if np.all(np.isnan(values)):
    raise TableError(f"{workdir!r}: no task has both a full-size single-task network and a multi-task network "
                     f"to compare; experiments/data_size.py trains singles, pairs and the all-task network")
  intervals = mean_intervals = None
  if study_tables.replicas is not None:
    per_replicate = uncertainty.replicate_values(study_tables.replicas[1], gains)
    intervals = uncertainty.t_intervals(per_replicate)
    with np.errstate(invalid="ignore"):
      mean_intervals = uncertainty.t_intervals(np.nanmean(per_replicate, axis=2))
  return Point(workdir, training_examples(config, workdir), study_tables.task_names, values, intervals, mean_intervals)


def sweep(workdirs: Sequence[str]) -> list[Point]:
  """Every workdir's point, by training-set size; the runs must share their tasks."""
  points = sorted((point(w) for w in workdirs), key=lambda p: p.examples)
  differing = [p.workdir for p in points if p.task_names != points[0].task_names]
  if differing:
    raise TableError(f"{', '.join(differing)} trained other tasks than {points[0].workdir} "
                     f"({', '.join(points[0].task_names)}); sweep one task set at a time")
  sizes = [p.examples for p in points]
  if len(set(sizes)) != len(sizes):
    raise TableError(f"two workdirs have the same training-set size ({sizes}); give one run per size")
  return points


def _percent(value: float, interval: Optional[tuple[float, float]]) -> str:
  if not np.isfinite(value):
    return "-"
  text = f"{100 * value:+.1f}%"
  if interval is not None and np.isfinite(interval[0]):
    resolved = interval[0] > 0 or interval[1] < 0
    text += f" [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]" + ("*" if resolved else "")
  return text


def report_lines(points: Sequence[Point], figure_name: str) -> list[str]:
  """The summary as markdown: per size, each task's all-task and pair gains and their means."""
  tasks = points[0].task_names
  intervals = any(p.intervals is not None for p in points)
  lines = ["# Multi-task against single-task learning as the training set grows", "",
           "Per training-set size (one run of `experiments/data_size.py` each) and task: 1 - the task's test loss "
           "in the all-task network (or, averaged, in its pairs) / its loss in its own single-task network, all "
           "of one standard network (positive: sharing helps)."
           + (" Means over seeds with their 95% intervals over seeds; * where the interval excludes zero."
              if intervals else " One seed per network: no intervals."), ""]
  header = ["training examples", "network", "mean over tasks"] + list(tasks)
  rows = []
  for p in points:
    for index, label in enumerate(("all tasks", "pairs")):
      mean_interval = None if p.mean_intervals is None else (p.mean_intervals[0][index], p.mean_intervals[1][index])
      cells = [_percent(p.gains[index, j], None if p.intervals is None else
                        (p.intervals[0][index, j], p.intervals[1][index, j])) for j in range(len(tasks))]
      rows.append([f"{p.examples}", label, _percent(p.means[index], mean_interval)] + cells)
  lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  lines += ["", "Runs: " + ", ".join(f"`{p.workdir}` ({p.examples} examples)" for p in points) + ".", "",
            f"![Multi-task gain against training-set size]({figure_name})", ""]
  return lines


FIGURE = "data_size.png"


def write(workdirs: Sequence[str], out: str) -> str:
  """Writes ``data_size.md``, ``data_size.json`` and the figure under ``out``; returns the report's path."""
  points = sweep(workdirs)
  os.makedirs(out, exist_ok=True)
  figures.data_size(points, os.path.join(out, FIGURE))
  workdir_lib.write_json(os.path.join(out, "data_size.json"), {
      "tasks": list(points[0].task_names),
      "points": [{"workdir": p.workdir, "examples": p.examples,
                  "all_tasks": _nullable(p.gains[0]), "pairs": _nullable(p.gains[1]),
                  "means": _nullable(p.means),
                  "mean_intervals": None if p.mean_intervals is None else [_nullable(v) for v in p.mean_intervals]}
                 for p in points]})
  path = os.path.join(out, "data_size.md")
  workdir_lib.write_atomic(path, "\n".join(report_lines(points, FIGURE)))
  return path


def _nullable(values: np.ndarray) -> list[Optional[float]]:
  return [None if not np.isfinite(v) else float(v) for v in np.asarray(values, dtype=float)]
