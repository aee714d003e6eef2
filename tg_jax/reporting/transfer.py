"""Transfer affinity (the paper's Table 3) against multi-task affinity (Table 2): Figure 3 (numpy/scipy).

Transfer affinity is Taskonomy's question asked with this run's networks: how good is the
representation one task's network learned for another task? Entry (t, s) of a ``TransferAffinity``
is ``1 - L(t decoded from s's frozen encoder) / L(t's own single-task network)`` on test, both at
full size (``tg_jax.training.transfer`` trains the decoders; their losses are the transfer phase's
``methods.json``): 0 when s's representation serves t as well as t's own, negative when worse.
Rows are the task measured and columns the task that helps, as in Table 1; like Table 2, the
symmetric affinity of a pair is the mean of its two directions.

A matrix from elsewhere (e.g. Taskonomy's published affinities) reads from a CSV (``read_csv``):

    task,depth,normals,edges2d
    depth,,0.31,0.12
    normals,0.28,,0.05
    edges2d,0.02,0.07,

entry (row, column): the affinity of transferring to the row task from the column task's
representation (only the symmetric mean enters Figure 3, so the orientation matters only for the
directed table); higher is better; the diagonal and unknown entries empty; extra tasks ignored.

The paper found the two affinities anti-correlated (Pearson r = -0.54, p = 0.13, its Figure 3):
tasks whose representations transfer well need not help each other when trained together.
``correlate`` gives r, its p-value (``scipy.stats.pearsonr``) and, with seed replicas of both, r per
replicate with its 95% interval.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
from typing import Mapping, Optional, Sequence

import numpy as np
from scipy import stats

from tg_jax import records
from tg_jax.selection import uncertainty
from tg_jax.selection.tables import TableError

# The paper's Figure 3 (Taskonomy's transfer affinities against its Table 2).
PAPER_R, PAPER_P = -0.54, 0.13
# Fewer pairs than this give no correlation (two points always lie on a line).
MIN_PAIRS = 3


@dataclasses.dataclass(frozen=True)
class TransferAffinity:
  """A directed transfer-affinity matrix, per replicate.

  Attributes:
    task_names: the tasks, rows and columns alike.
    replicates: ``[replicates, tasks, tasks]``: entry (t, s) the affinity of transferring to task t
      from task s's representation (higher is better); NaN on the diagonal and where unknown. One
      replicate for a matrix without seed replicas.
    seeds: the replicates' seeds (``()`` for a matrix from elsewhere).
    source: where the numbers come from, as the report names it.
  """

  task_names: tuple[str, ...]
  replicates: np.ndarray
  seeds: tuple[int, ...] = ()
  source: str = ""

  @property
  def matrix(self) -> np.ndarray:
    """``[tasks, tasks]``: the mean over replicates."""
    return self.replicates.mean(axis=0)

  def symmetric(self) -> np.ndarray:
    """``[replicates, tasks, tasks]``: each pair's mean of its two directions (Table 2's symmetrisation)."""
    return (self.replicates + np.swapaxes(self.replicates, 1, 2)) / 2

  def intervals(self, symmetric: bool = False) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """95% Student-t intervals over replicates of the directed (or symmetric) matrix; None for one."""
    return uncertainty.t_intervals(self.symmetric() if symmetric else self.replicates)

  def restricted_to(self, task_names: Sequence[str]) -> "TransferAffinity":
    """The rows and columns of ``task_names``, in that order (a matrix from elsewhere may have more)."""
    missing = [t for t in task_names if t not in self.task_names]
    if missing:
      raise TableError(f"the transfer affinities of {self.source} have no task {', '.join(missing)}; their tasks: "
                       f"{', '.join(self.task_names)} (name the CSV's rows and columns as config.tasks does)")
    index = [self.task_names.index(t) for t in task_names]
    return dataclasses.replace(self, task_names=tuple(task_names),
                               replicates=self.replicates[:, index][:, :, index])


def measured(transfer_networks: Mapping[str, Mapping], network_records: Sequence[records.NetworkRecord],
             task_names: Sequence[str], source: str = "") -> Optional[TransferAffinity]:
  """The transfer affinity measured by a run's transfer phase, on test, per seed replica.

  Args:
    transfer_networks: the transfer phase's ``methods.json`` (``{name: {"method": "from_<source>",
      "tasks": [target], "size", "test": {target: loss}, "seed"?}}``); other method entries are ignored.
    network_records: the main run's networks: each target's full-size single-task network (same seed)
      is the reference.
    task_names: the study's tasks (rows and columns).

  Returns:
    None when no transfer network was trained; entries whose network or reference is missing are NaN.
  """
  singles = {(n.tasks[0], n.seed): n.test[n.tasks[0]] for n in network_records
             if len(n.tasks) == 1 and not n.method and n.size == records.FULL_SIZE and n.status == records.TRAINED}
  losses: dict[int, dict[tuple[str, str], float]] = {}
  for entry in transfer_networks.values():
    origin = records.transfer_source(entry.get("method", ""))
    if not origin or entry.get("size") != records.FULL_SIZE:
      continue
    target, = entry["tasks"]
    losses.setdefault(int(entry.get("seed", 0)), {})[(target, origin)] = float(entry["test"][target])
  if not losses:
    return None
  seeds = tuple(sorted(losses))
  replicates = np.full((len(seeds), len(task_names), len(task_names)), np.nan)
  for r, seed in enumerate(seeds):
    for (target, origin), loss in losses[seed].items():
      reference = singles.get((target, seed))
      if reference is not None and target in task_names and origin in task_names:
        replicates[r, task_names.index(target), task_names.index(origin)] = 1.0 - loss / reference
  return TransferAffinity(tuple(task_names), replicates, seeds, source)


def read_csv(path: str) -> TransferAffinity:
  """A transfer-affinity matrix from a CSV (the format in this module's docstring).

  Raises a ``TableError`` naming the file and the problem: a header without tasks, rows not naming
  the header's tasks, a value that is not a number.
  """
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
  except OSError as error:
    raise TableError(f"transfer affinities {path}: cannot be read ({error.strerror or error})") from None
  if not rows or len(rows[0]) < 3:
    raise TableError(f"transfer affinities {path}: the header must be 'task,<task>,<task>,...' naming two or more "
                     f"tasks; see tg_jax/reporting/transfer.py")
  columns = tuple(cell.strip() for cell in rows[0][1:])
  row_names = tuple(row[0].strip() for row in rows[1:])
  if sorted(row_names) != sorted(columns) or len(set(columns)) != len(columns):
    raise TableError(f"transfer affinities {path}: the rows ({', '.join(row_names)}) must name the header's tasks "
                     f"({', '.join(columns)}) once each: a square matrix")
  matrix = np.full((len(columns), len(columns)), np.nan)
  for line, row in enumerate(rows[1:], start=2):
    if len(row) - 1 > len(columns):
      raise TableError(f"transfer affinities {path}, line {line}: {len(row) - 1} values for {len(columns)} tasks")
    i = columns.index(row[0].strip())
    for j, cell in enumerate(row[1:]):
      if not cell.strip() or i == j:
        continue
      try:
        matrix[i, j] = float(cell)
      except ValueError:
        raise TableError(f"transfer affinities {path}, line {line}, column {columns[j]!r}: {cell!r} is not a "
                         f"number (leave unknown entries empty)") from None
  return TransferAffinity(columns, matrix[None], (), path)


@dataclasses.dataclass(frozen=True)
class Correlation:
  """Figure 3's points and their Pearson correlation.

  Attributes:
    pairs: the task pairs with both affinities known.
    transfer, multitask: ``[pairs]`` each pair's symmetric affinities (means over replicates).
    transfer_intervals, multitask_intervals: ``([pairs] low, [pairs] high)`` 95% intervals over
      replicates, or None without replicas.
    r, p: Pearson r of the means and its two-sided p-value; NaN for fewer than ``MIN_PAIRS`` pairs.
    replicate_r: r of each replicate (transfer and multi-task affinities of the same seed), when both
      have two or more replicates of the same seeds; ``r_interval`` its 95% Student-t interval.
  """

  pairs: tuple[tuple[str, str], ...]
  transfer: np.ndarray
  multitask: np.ndarray
  transfer_intervals: Optional[tuple[np.ndarray, np.ndarray]]
  multitask_intervals: Optional[tuple[np.ndarray, np.ndarray]]
  r: float
  p: float
  replicate_r: Optional[np.ndarray] = None
  r_interval: Optional[tuple[float, float]] = None


def _pearson(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
  if len(x) < MIN_PAIRS or np.ptp(x) == 0 or np.ptp(y) == 0:
    return float("nan"), float("nan")
  result = stats.pearsonr(x, y)
  return float(result.statistic), float(result.pvalue)


def correlate(transfer: TransferAffinity, multitask: np.ndarray, multitask_seeds: Sequence[int] = ()) -> Correlation:
  """Pearson r between the symmetric transfer and multi-task affinities over the task pairs.

  Args:
    transfer: the transfer affinities, on the study's tasks (``restricted_to``).
    multitask: ``[replicates, tasks, tasks]`` Table 2's symmetric multi-task affinity per replicate
      (one replicate without replicas), same task order.
    multitask_seeds: the multi-task replicates' seeds; per-replicate r needs them to equal
      ``transfer.seeds``.
  """
  if multitask.shape[1:] != transfer.replicates.shape[1:]:
    raise ValueError(f"multi-task affinities over {multitask.shape[1]} tasks, transfer over "
                     f"{transfer.replicates.shape[1]}; restrict both to the study's tasks")
  symmetric = transfer.symmetric()
  mean_transfer, mean_multitask = symmetric.mean(axis=0), multitask.mean(axis=0)
  index = [(i, j) for i, j in itertools.combinations(range(len(transfer.task_names)), 2)
           if np.isfinite(mean_transfer[i, j]) and np.isfinite(mean_multitask[i, j])]
  rows, cols = (np.asarray([i for i, _ in index], int), np.asarray([j for _, j in index], int))
  points = lambda matrices: matrices[..., rows, cols]
  r, p = _pearson(points(mean_transfer), points(mean_multitask))
  intervals = lambda values: uncertainty.t_intervals(points(values))
  replicate_r = r_interval = None
  if len(transfer.seeds) >= 2 and tuple(multitask_seeds) == transfer.seeds:
    replicate_r = np.asarray([_pearson(points(t), points(m))[0] for t, m in zip(symmetric, multitask)])
    found = uncertainty.t_intervals(replicate_r)
    r_interval = None if found is None else (float(found[0]), float(found[1]))
  return Correlation(tuple((transfer.task_names[i], transfer.task_names[j]) for i, j in index),
                     points(mean_transfer), points(mean_multitask), intervals(symmetric), intervals(multitask),
                     r, p, replicate_r, r_interval)
