"""What a run writes as it trains: results tables, a JSON-lines log, TensorBoard scalars, progress.

Where each file lives is ``tg_jax.workdir``'s business.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import time
from typing import Any, Mapping, Optional, Sequence

from absl import logging

from tg_jax import workdir as workdir_lib
from tg_jax.selection import tables


@dataclasses.dataclass(frozen=True)
class TableRow:
  """One row of a results table: a network replica's losses.

  Attributes:
    name: the network's name (``records.Network.name``, with its ``#seed``).
    tasks, cost: the network's tasks and inference cost in SNT (the row's identity in the table).
    seed: the replica's seed.
    losses: ``{task: loss}`` over the network's tasks.
  """

  name: str
  tasks: tuple[str, ...]
  cost: float
  seed: int
  losses: Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class NamedTable:
  """A results table and the network name of each of its CSV rows.

  Attributes:
    replicas: the table (``tables.Replicas``: rows of one network's replicas are its seeds).
    names: per CSV row, in the CSV's order, the network (replica) name.
    seeded: whether the CSV has the seed column (the run has more than one seed).
  """

  replicas: tables.Replicas
  names: tuple[str, ...]
  seeded: bool


def results_table(task_order: Sequence[str], rows: Sequence[TableRow], what: str,
                  seeded: bool) -> Optional[NamedTable]:
  """The table of ``rows``; ``None`` if no row is left.

  Columns are the tasks of ``task_order`` that some row solves; a task no network solves (every
  network of it diverged, or a shard without it) is left out with a warning. ``seeded`` (the run has
  more than one seed): rows of one network's replicas are grouped, network by network in order of
  first appearance, seeds ascending (``tables.Replicas``), and the CSV carries the seed column;
  otherwise each row is a network, in the order given.
  """
  if not rows:
    logging.warning("%s table: no network to report", what)
    return None
  solved = {t for row in rows for t in row.losses}
  missing = [t for t in task_order if t not in solved]
  if missing:
    logging.warning("%s table: no network solves %s; leaving those columns out", what, ", ".join(missing))
  table = tables.ResultsTable.from_rows([t for t in task_order if t in solved],
                                        [(row.tasks, row.cost, row.losses) for row in rows])
  if not seeded:
    return NamedTable(tables.Replicas.from_table(table), tuple(row.name for row in rows), False)
  replicas = tables.Replicas.from_table(table, [row.seed for row in rows])
  name_of = {(table.network_key(i), row.seed): row.name for i, row in enumerate(rows)}
  names = tuple(name_of[replicas.table.network_key(n), seed]
                for n in range(replicas.table.num_networks) for seed in replicas.seeds[n])
  return NamedTable(replicas, names, True)


class RunLog:
  """``log.jsonl``: one JSON object per line, each with ``event`` and ``step``.

  On resume the lines after the restored step are dropped, so the log of a resumed run reads like
  the log of an uninterrupted one.
  """

  def __init__(self, path: str, resume_step: Optional[int]):
    self._path = path
    kept = []
    if resume_step is not None and os.path.exists(path):
      # Undecodable bytes become U+FFFD, and a line that is then not JSON is dropped like one cut short.
      with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
          try:
            entry = json.loads(line)
          except json.JSONDecodeError:  # a line cut short by a kill
            continue
          if isinstance(entry, dict) and entry.get("step", 0) <= resume_step:
            kept.append(line if line.endswith("\n") else line + "\n")
    workdir_lib.write_atomic(path, "".join(kept))
    self._file = open(path, "a", encoding="utf-8")

  def write(self, event: str, step: int, **fields: Any) -> None:
    self._file.write(json.dumps({"event": event, "step": step, "time": round(time.time(), 3), **fields},
                                allow_nan=True) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class Scalars:
  """TensorBoard scalars (``flax.metrics.tensorboard``), or nothing with a warning if unavailable."""

  def __init__(self, directory: str):
    try:
      from flax.metrics import tensorboard  # pylint: disable=g-import-not-at-top
    except ImportError as error:  # tensorboard is an optional extra for CPU-only installs
      logging.warning("TensorBoard scalars disabled (%s); pip install tensorboard to enable them", error)
      self._writer = None
      return
    self._writer = tensorboard.SummaryWriter(directory)

  def write(self, step: int, values: Mapping[str, float]) -> None:
    if self._writer is None:
      return
    for tag, value in values.items():
      if math.isfinite(value):
        self._writer.scalar(tag, value, step)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class Progress:
  """Steps per second and time left, measured over this process's last ``RATE_WINDOW`` progress lines.

  A window, not the whole run: one-off costs (the first validation's compile, a resume's restore)
  would otherwise hold the rate down for the rest of the run; a window of several validation intervals
  still counts the validations' share of the time.
  """

  RATE_WINDOW = 10

  def __init__(self, stop_step: int):
    self._stop_step = stop_step
    self._marks: collections.deque = collections.deque(maxlen=self.RATE_WINDOW + 1)  # (step, time)

  def start_timing(self, step: int) -> None:
    """Starts the clock after the first (compiling) step, so the rate measures training."""
    self._marks.clear()
    self._marks.append((step, time.time()))

  def line(self, step: int, extra: str = "") -> str:
    done = step / max(self._stop_step, 1)
    text = f"step {step}/{self._stop_step} ({100 * done:.0f}%)"
    if self._marks and step > self._marks[-1][0]:
      self._marks.append((step, time.time()))
      (first_step, first_time), (last_step, last_time) = self._marks[0], self._marks[-1]
      rate = (last_step - first_step) / max(last_time - first_time, 1e-9)
      text += f" | {rate:.2f} steps/s | ETA {format_duration((self._stop_step - step) / rate)}"
    return f"{text} | {extra}" if extra else text
