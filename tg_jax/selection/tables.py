"""Results tables: one row per trained network, its cost and its loss on every task it solves.

The hand-off between training and selection. On disk it is a CSV whose header is
``tasks,cost,<task>,<task>,...``: ``tasks`` is the ``+``-joined names of the tasks the network was
trained on, ``cost`` its inference cost in standard-network units (SNT), and each task cell that
network's loss on the task, empty where the network does not solve it. The authors' own tab-separated
format (``read_standley``) is read too.

Helper tasks (Caruana's "extra outputs"): tasks some networks are trained on so that they help
the others, never served. ``ResultsTable.with_helpers`` drops their columns: a network trained on
``depth+edges3d`` keeps its name and identity (``network_key``) but solves, and may serve, only
``depth``; a network of helper tasks alone serves nothing and leaves the table. The selector, the
baselines and the uncertainty then see only the served tasks.

Seed replicas: a table may have a ``seed`` column right after ``cost``
(``tasks,cost,seed,<task>,...``); rows with the same tasks and cost are then replicas of one network,
trained with different seeds. ``read_replicas`` keeps every replica (``Replicas``); ``read_csv``
gives each network's mean over its replicas, so everything that selects on one loss per network works
unchanged. A table without the column holds one replica per network.

numpy only: people run this on laptops against tables from other codebases.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np

TASK_SEPARATOR = "+"
STANDLEY_TASK_NAMES = ("s", "d", "n", "k", "e")
STANDLEY_HALF_COST = 0.5
STANDLEY_FULL_COST = 1.0


# Costs measured from FLOPs land near, not on, a network's nominal size (channels are integers): a
# network "has size s" when its cost is within this fraction of s.
SIZE_TOLERANCE = 0.05
SEED_COLUMN = "seed"


def network_key(tasks: Iterable[str], cost: float) -> tuple[frozenset, float]:
  """What identifies an equal-weight network across tables and records: its task set and its cost
  (rounded below the precision tables are written with, so a written and re-read cost matches)."""
  return frozenset(tasks), round(float(cost), 9)


def has_size(cost: float, size: float) -> bool:
  """Whether a network of (measured) ``cost`` is a network of nominal ``size`` in SNT."""
  return abs(float(cost) - size) <= SIZE_TOLERANCE * size


class TableError(ValueError):
  """A results table that cannot be used; the message names where and how to fix it."""


@dataclasses.dataclass(frozen=True, eq=False)
class ResultsTable:
  """Per-network, per-task losses.

  Attributes:
    task_names: the table's task columns, in order.
    network_tasks: for each network (row), the names of the tasks it was trained on.
    costs: ``[networks]`` inference cost in SNT.
    losses: ``[networks, tasks]`` loss of each network on each task; ``inf`` where the network does
      not solve the task (so that "best network for a task" is a plain minimum).
    helper_tasks: tasks a network may be trained on without a column: helpers, never served
      (``with_helpers``). A network solves exactly its tasks that are not helpers.
  """

  task_names: tuple[str, ...]
  network_tasks: tuple[tuple[str, ...], ...]
  costs: np.ndarray
  losses: np.ndarray
  helper_tasks: tuple[str, ...] = ()

  def __post_init__(self):
    costs = np.asarray(self.costs, dtype=np.float64)
    losses = np.asarray(self.losses, dtype=np.float64)
    object.__setattr__(self, "costs", costs)
    object.__setattr__(self, "losses", losses)
    costs.setflags(write=False)
    losses.setflags(write=False)
    num_networks, num_tasks = len(self.network_tasks), len(self.task_names)
    if losses.shape != (num_networks, num_tasks) or costs.shape != (num_networks,):
      raise TableError(f"table shapes disagree: {num_networks} networks and {num_tasks} tasks, but costs "
                       f"{costs.shape} and losses {losses.shape}")
    if len(set(self.task_names)) != num_tasks:
      raise TableError(f"duplicate task names in {self.task_names}")
    object.__setattr__(self, "helper_tasks", tuple(self.helper_tasks))
    served_helpers = sorted(set(self.helper_tasks) & set(self.task_names))
    if served_helpers:
      raise TableError(f"helper task(s) {served_helpers} also have a column; a helper is never served "
                       f"(ResultsTable.with_helpers drops its column)")
    column = {name: i for i, name in enumerate(self.task_names)}
    for row, tasks in enumerate(self.network_tasks):
      unknown = [t for t in tasks if t not in column and t not in self.helper_tasks]
      if unknown:
        raise TableError(f"network {row} ({self.network_label(row)}) names unknown task(s) {unknown}; "
                         f"table tasks: {', '.join(self.task_names)}")
      solved = {self.task_names[j] for j in np.flatnonzero(np.isfinite(losses[row]))}
      served = set(tasks) - set(self.helper_tasks)
      if solved != served or not served:
        raise TableError(f"network {row} ({self.network_label(row)}) has losses for {sorted(solved)} but is "
                         f"trained on {sorted(tasks)}; a network has a loss exactly for its own tasks"
                         + (f" other than helper tasks ({', '.join(self.helper_tasks)})" if self.helper_tasks else ""))
    if np.any(~np.isfinite(costs)) or np.any(costs < 0):
      raise TableError(f"costs must be finite and >= 0, got {costs}")
    if np.any(np.isnan(losses)) or np.any(losses == -np.inf):
      raise TableError("losses must be numbers or +inf (not solved)")
    unsolved = [t for j, t in enumerate(self.task_names) if not np.isfinite(losses[:, j]).any()]
    if unsolved:
      raise TableError(f"no network solves task(s) {unsolved}: add a network trained on them or drop "
                       f"the column")

  @classmethod
  def from_rows(cls, task_names: Sequence[str],
                rows: Iterable[tuple[Sequence[str], float, Mapping[str, float]]]) -> "ResultsTable":
    """Builds a table from ``(tasks, cost, {task: loss})`` rows."""
    task_names = tuple(task_names)
    column = {name: i for i, name in enumerate(task_names)}
    network_tasks, costs, losses = [], [], []
    for tasks, cost, task_losses in rows:
      row = np.full(len(task_names), np.inf)
      for task, loss in task_losses.items():
        if task not in column:
          raise TableError(f"unknown task {task!r}; table tasks: {', '.join(task_names)}")
        row[column[task]] = loss
      network_tasks.append(tuple(tasks))
      costs.append(cost)
      losses.append(row)
    return cls(task_names, tuple(network_tasks), np.array(costs, dtype=np.float64),
               np.array(losses, dtype=np.float64).reshape(len(network_tasks), len(task_names)))

  @property
  def num_networks(self) -> int:
    return len(self.network_tasks)

  @property
  def num_tasks(self) -> int:
    return len(self.task_names)

  @property
  def solves(self) -> np.ndarray:
    """``[networks, tasks]`` bool: whether each network solves each task."""
    return np.isfinite(self.losses)

  def network_key(self, row: int) -> tuple[frozenset, float]:
    """What identifies a network across tables: its task set and its cost (``network_key``)."""
    return network_key(self.network_tasks[row], self.costs[row])

  def network_label(self, row: int) -> str:
    tasks = TASK_SEPARATOR.join(self.network_tasks[row])
    return f"{tasks} @ {self.costs[row]:g} SNT"

  def helpers_of(self, row: int) -> tuple[str, ...]:
    """The helper tasks network ``row`` is trained on besides the tasks it serves."""
    return tuple(t for t in self.network_tasks[row] if t in self.helper_tasks)

  def helped_rows(self) -> list[int]:
    """The rows of networks trained with a helper task."""
    return [r for r in range(self.num_networks) if self.helpers_of(r)]

  def without_helper_networks(self) -> "ResultsTable":
    """The networks trained on served tasks alone: the groups the paper's analyses (pairs, HOA,
    Figure 2) are about."""
    helped = set(self.helped_rows())
    return self.subset([r for r in range(self.num_networks) if r not in helped])

  def with_helpers(self, helper_tasks: Sequence[str]) -> "ResultsTable":
    """This table serving only its tasks outside ``helper_tasks``: their columns dropped, and the
    networks trained on helpers alone. Helpers the table has no column for drop nothing (a
    retraining run writes only the columns of its networks' tasks)."""
    helpers = tuple(dict.fromkeys(tuple(self.helper_tasks) + tuple(helper_tasks)))
    served = [j for j, t in enumerate(self.task_names) if t not in helpers]
    if not served:
      raise TableError(f"every task of the table ({', '.join(self.task_names)}) is a helper task; serve at "
                       f"least one (drop it from the helper tasks)")
    rows = [r for r in range(self.num_networks) if np.isfinite(self.losses[r, served]).any()]
    return ResultsTable(tuple(self.task_names[j] for j in served), tuple(self.network_tasks[r] for r in rows),
                        self.costs[rows], self.losses[np.ix_(rows, served)], helpers)

  def subset(self, rows: Sequence[int]) -> "ResultsTable":
    rows = list(rows)
    return ResultsTable(self.task_names, tuple(self.network_tasks[r] for r in rows), self.costs[rows],
                        self.losses[rows], self.helper_tasks)

  def concat(self, other: "ResultsTable") -> "ResultsTable":
    """Both tables' rows over this table's tasks; ``other`` may leave out tasks none of its networks
    solve (a retraining run of a few networks writes only their columns)."""
    return ResultsTable(self.task_names, self.network_tasks + other.network_tasks,
                        np.concatenate([self.costs, other.costs]),
                        np.concatenate([self.losses, _widened(other.losses, other.task_names, self.task_names)]),
                        tuple(dict.fromkeys(self.helper_tasks + other.helper_tasks)))

  def with_task_order(self, task_names: Sequence[str], what: str = "test table") -> "ResultsTable":
    """This table with its task columns in the order ``task_names`` (the same tasks), or an error
    naming the tasks that differ."""
    task_names = tuple(task_names)
    if set(task_names) != set(self.task_names):
      raise TableError(f"the {what}'s tasks {list(self.task_names)} differ from the validation table's "
                       f"{list(task_names)}: missing {sorted(set(task_names) - set(self.task_names)) or 'none'}, "
                       f"extra {sorted(set(self.task_names) - set(task_names)) or 'none'}")
    columns = [self.task_names.index(t) for t in task_names]
    return ResultsTable(task_names, self.network_tasks, self.costs, self.losses[:, columns], self.helper_tasks)

  def aligned_to(self, reference: "ResultsTable", what: str = "test table") -> "ResultsTable":
    """This table's rows reordered to match ``reference``'s networks and its task columns matched to
    ``reference``'s by name, or an error saying what differs."""
    if self.task_names != reference.task_names:
      return self.with_task_order(reference.task_names, what).aligned_to(reference, what)
    rows_by_key: dict = {}
    for row in range(self.num_networks):
      rows_by_key.setdefault(self.network_key(row), []).append(row)
    order, missing = [], []
    for row in range(reference.num_networks):
      candidates = rows_by_key.get(reference.network_key(row))
      if candidates:
        order.append(candidates.pop(0))
      else:
        missing.append(reference.network_label(row))
    extra = [self.network_label(r) for rows in rows_by_key.values() for r in rows]
    if missing or extra:
      raise TableError(f"the {what}'s networks do not match the validation table's: missing "
                       f"{missing or 'none'}; not in the validation table: {extra or 'none'}")
    return self.subset(order)


def _widened(losses: np.ndarray, task_names: Sequence[str], to: Sequence[str]) -> np.ndarray:
  """``losses`` (tasks on the last axis, ``task_names``) over the columns ``to``, inf (unsolved) in
  the columns it lacks."""
  extra = [t for t in task_names if t not in to]
  if extra:
    raise TableError(f"cannot join tables: the second has task(s) {extra} the first does not ({', '.join(to)})")
  widened = np.full(losses.shape[:-1] + (len(to),), np.inf)
  widened[..., [list(to).index(t) for t in task_names]] = losses
  return widened


@dataclasses.dataclass(frozen=True, eq=False)
class Replicas:
  """Every replica (training seed) of every network of a table.

  Attributes:
    table: one row per network, its losses the mean over its replicas (what selection uses).
    seeds: per network, the seeds of its replicas, ascending.
    samples: ``[networks, replicas, tasks]`` loss of each replica; ``inf`` where the network does not
      solve the task, NaN past a network's own number of replicas.
  """

  table: ResultsTable
  seeds: tuple[tuple[int, ...], ...]
  samples: np.ndarray

  @classmethod
  def from_table(cls, rows: ResultsTable, seeds: Optional[Sequence[int]] = None) -> "Replicas":
    """Groups ``rows`` that share tasks and cost into one network when ``seeds`` (one per row) are
    given; without seeds every row is a network with one replica."""
    if seeds is None:
      return cls(rows, tuple((0,) for _ in range(rows.num_networks)), rows.losses[:, None, :])
    groups: dict = {}
    for row in range(rows.num_networks):
      groups.setdefault(rows.network_key(row), []).append(row)
    count = max(len(members) for members in groups.values())
    samples = np.full((len(groups), count, rows.num_tasks), np.nan)
    network_seeds, firsts = [], []
    for i, members in enumerate(groups.values()):
      members = sorted(members, key=lambda r: seeds[r])
      member_seeds = tuple(int(seeds[r]) for r in members)
      if len(set(member_seeds)) != len(member_seeds):
        raise TableError(f"network {rows.network_label(members[0])} has seed {member_seeds} twice; each replica "
                         f"of a network needs its own seed")
      samples[i, :len(members)] = rows.losses[members]
      network_seeds.append(member_seeds)
      firsts.append(members[0])
    means = np.nanmean(samples, axis=1)
    table = ResultsTable(rows.task_names, tuple(rows.network_tasks[r] for r in firsts), rows.costs[firsts], means,
                         rows.helper_tasks)
    return cls(table, tuple(network_seeds), samples)

  @property
  def counts(self) -> np.ndarray:
    """``[networks]`` how many replicas each network has."""
    return np.asarray([len(s) for s in self.seeds])

  @property
  def replicated(self) -> bool:
    return bool(self.counts.max() > 1)

  def with_helpers(self, helper_tasks: Sequence[str]) -> "Replicas":
    """Every replica over the served tasks (``ResultsTable.with_helpers``)."""
    table = self.table.with_helpers(helper_tasks)
    columns = [self.table.task_names.index(t) for t in table.task_names]
    rows = [r for r in range(self.table.num_networks) if np.isfinite(self.table.losses[r, columns]).any()]
    count = max(len(self.seeds[r]) for r in rows)
    return Replicas(table, tuple(self.seeds[r] for r in rows), self.samples[rows][:, :count][:, :, columns])

  def subset(self, rows: Sequence[int]) -> "Replicas":
    rows = list(rows)
    count = max(len(self.seeds[r]) for r in rows)
    return Replicas(self.table.subset(rows), tuple(self.seeds[r] for r in rows), self.samples[rows, :count])

  def concat(self, other: "Replicas") -> "Replicas":
    count = max(self.samples.shape[1], other.samples.shape[1])
    pad = lambda samples: np.concatenate(
        [samples, np.full((samples.shape[0], count - samples.shape[1], samples.shape[2]), np.nan)], axis=1)
    widened = _widened(other.samples, other.table.task_names, self.table.task_names)
    return Replicas(self.table.concat(other.table), self.seeds + other.seeds,
                    np.concatenate([pad(self.samples), pad(widened)]))

  def aligned_to(self, reference: "Replicas", what: str = "test table") -> "Replicas":
    """This table's networks in ``reference``'s order (task columns matched by name), each with the
    same seeds (val and test of one replica are one trained network: resampling keeps them paired)."""
    if self.table.task_names != reference.table.task_names:
      columns = [self.table.task_names.index(t) for t in self.table.with_task_order(
          reference.table.task_names, what).task_names]
      reordered = Replicas(self.table.with_task_order(reference.table.task_names, what), self.seeds,
                           self.samples[:, :, columns])
      return reordered.aligned_to(reference, what)
    aligned = self.table.aligned_to(reference.table, what)
    order = {self.table.network_key(r): r for r in range(self.table.num_networks)}
    rows = [order[aligned.network_key(r)] for r in range(aligned.num_networks)]
    result = self.subset(rows)
    differing = [reference.table.network_label(r) for r in range(len(rows)) if result.seeds[r] != reference.seeds[r]]
    if differing:
      raise TableError(f"the {what}'s replicas have other seeds than the validation table's for "
                       f"{', '.join(differing)}; both tables must hold the same trained replicas")
    return result

  def rows(self) -> list[tuple[tuple[str, ...], float, int, dict[str, float]]]:
    """``(tasks, cost, seed, {task: loss})`` per replica, network by network."""
    table = self.table
    return [(table.network_tasks[n], float(table.costs[n]), seed,
             {t: float(self.samples[n, r, j]) for j, t in enumerate(table.task_names) if t in table.network_tasks[n]})
            for n in range(table.num_networks) for r, seed in enumerate(self.seeds[n])]


def _where(source: str, line: int, column: Optional[str] = None) -> str:
  return f"{source}: line {line}" + (f", column {column!r}" if column else "")


def _parse_number(text: str, where: str, what: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise TableError(f"{where}: {what} {text!r} is not a number; write a decimal number "
                     f"(or leave the cell empty if the network does not solve the task)") from None
  if not math.isfinite(value):
    raise TableError(f"{where}: {what} is {text!r}; losses and costs must be finite numbers "
                     f"(drop a diverged network's row instead)")
  return value


def _validated(task_names, network_tasks, costs, losses, source: str) -> ResultsTable:
  """Builds the table; whole-table problems (e.g. a task no network solves) name the file."""
  losses = np.array(losses, dtype=np.float64).reshape(len(network_tasks), len(task_names))
  try:
    return ResultsTable(tuple(task_names), tuple(network_tasks), np.array(costs, dtype=np.float64), losses)
  except TableError as error:
    raise TableError(f"{source}: {error}") from None


def parse_replicas(text: str, source: str = "<csv>") -> "Replicas":
  """Parses the CSV format described in the module docstring, keeping every replica."""
  reader = csv.reader(io.StringIO(text))
  rows = [(number, row) for number, row in enumerate(reader, start=1) if any(cell.strip() for cell in row)]
  if not rows:
    raise TableError(f"{source}: the table is empty; expected a header 'tasks,cost,<task>,...' and one row "
                     f"per network")
  header_line, header = rows[0]
  header = [cell.strip() for cell in header]
  seeded = header[2:3] == [SEED_COLUMN]
  first_task = 3 if seeded else 2
  if header[:2] != ["tasks", "cost"] or len(header) <= first_task:
    raise TableError(f"{_where(source, header_line)}: the header must start 'tasks,cost,' (optionally "
                     f"'tasks,cost,seed,') followed by one column per task; got {','.join(header)!r}")
  task_names = header[first_task:]
  seen = set()
  for name in task_names:
    if not name:
      raise TableError(f"{_where(source, header_line)}: a task column has an empty name")
    if name in seen:
      raise TableError(f"{_where(source, header_line, name)}: task column {name!r} appears twice; "
                       f"each task has exactly one column")
    if TASK_SEPARATOR in name:
      raise TableError(f"{_where(source, header_line, name)}: task names cannot contain "
                       f"{TASK_SEPARATOR!r}, which joins the tasks of a network")
    seen.add(name)
  column = {name: i for i, name in enumerate(task_names)}
  network_tasks, costs, seeds, losses = [], [], [], []
  for line, row in rows[1:]:
    row = [cell.strip() for cell in row]
    if len(row) != len(header):
      raise TableError(f"{_where(source, line)}: {len(row)} cells but the header has {len(header)}; "
                       f"leave a cell empty (not missing) where a network does not solve a task")
    tasks = tuple(t for t in row[0].split(TASK_SEPARATOR) if t)
    if not tasks:
      raise TableError(f"{_where(source, line, 'tasks')}: empty; name the network's tasks joined by "
                       f"{TASK_SEPARATOR!r}, e.g. {TASK_SEPARATOR.join(task_names[:2])!r}")
    for task in tasks:
      if task not in column:
        raise TableError(f"{_where(source, line, 'tasks')}: unknown task {task!r}; the header's tasks are "
                         f"{', '.join(task_names)}")
    if len(set(tasks)) != len(tasks):
      raise TableError(f"{_where(source, line, 'tasks')}: {row[0]!r} names a task twice")
    cost = _parse_number(row[1], _where(source, line, "cost"), "cost")
    if cost < 0:
      raise TableError(f"{_where(source, line, 'cost')}: negative cost {cost:g}; costs are inference costs "
                       f"in standard-network units and must be >= 0")
    if seeded:
      try:
        seeds.append(int(row[2]))
      except ValueError:
        raise TableError(f"{_where(source, line, SEED_COLUMN)}: {row[2]!r} is not an integer seed") from None
    values = np.full(len(task_names), np.inf)
    for name, cell in zip(task_names, row[first_task:]):
      trained = name in tasks
      if not cell:
        if trained:
          raise TableError(f"{_where(source, line, name)}: empty, but the network is trained on {name!r}; "
                           f"fill in its loss or remove {name!r} from the tasks cell")
        continue
      if not trained:
        raise TableError(f"{_where(source, line, name)}: has a loss but the network's tasks are "
                         f"{row[0]!r}; add {name!r} to the tasks cell or empty the cell")
      values[column[name]] = _parse_number(cell, _where(source, line, name), "loss")
    network_tasks.append(tasks)
    costs.append(cost)
    losses.append(values)
  if not network_tasks:
    raise TableError(f"{source}: the table has a header but no networks")
  if not seeded:
    first_line: dict = {}
    for (line, _), tasks, cost in zip(rows[1:], network_tasks, costs):
      key = network_key(tasks, cost)
      if key in first_line:
        raise TableError(f"{_where(source, line)}: network {TASK_SEPARATOR.join(tasks)} @ {cost:g} SNT repeats "
                         f"line {first_line[key]}; keep one row per network, or add a 'seed' column "
                         f"(tasks,cost,seed,...) if the rows are seed replicas")
      first_line[key] = line
  table = _validated(task_names, network_tasks, costs, losses, source)
  try:
    return Replicas.from_table(table, seeds if seeded else None)
  except TableError as error:
    raise TableError(f"{source}: {error}") from None


def parse_csv(text: str, source: str = "<csv>") -> ResultsTable:
  """Parses the CSV format described in the module docstring: one row per network (replicas averaged)."""
  return parse_replicas(text, source).table


def parse_standley(text: str, task_names: Sequence[str] = STANDLEY_TASK_NAMES,
                   source: str = "<standley>") -> ResultsTable:
  """Parses the authors' tab-separated format.

  Line 1 holds the half-size single-task networks (cost 0.5), one per column; every later line is a
  full network (cost 1) trained on the tasks whose cells are filled.
  """
  task_names = tuple(task_names)
  if len(set(task_names)) != len(task_names):
    raise TableError(f"duplicate task names {list(task_names)}; pass one distinct name per column")
  lines = [(number, line.rstrip("\r\n")) for number, line in enumerate(text.splitlines(), start=1)]
  lines = [(number, line) for number, line in lines if line.strip()]
  if not lines:
    raise TableError(f"{source}: the table is empty")
  network_tasks, costs, losses = [], [], []
  for index, (line, content) in enumerate(lines):
    cells = [cell.strip() for cell in content.split("\t")]
    if len(cells) > len(task_names):
      if any(cells[len(task_names):]):
        raise TableError(f"{_where(source, line)}: {len(cells)} columns but {len(task_names)} task names "
                         f"({','.join(task_names)}); pass --task_names with one name per column")
      cells = cells[:len(task_names)]
    cells += [""] * (len(task_names) - len(cells))
    values = np.full(len(task_names), np.inf)
    for j, cell in enumerate(cells):
      if cell:
        values[j] = _parse_number(cell, _where(source, line, task_names[j]), "loss")
    filled = [j for j in range(len(task_names)) if np.isfinite(values[j])]
    if index == 0:
      for j in filled:
        row = np.full(len(task_names), np.inf)
        row[j] = values[j]
        network_tasks.append((task_names[j],))
        costs.append(STANDLEY_HALF_COST)
        losses.append(row)
    else:
      network_tasks.append(tuple(task_names[j] for j in filled))
      costs.append(STANDLEY_FULL_COST)
      losses.append(values)
  return _validated(task_names, network_tasks, costs, losses, source)


def _read_text(path: str) -> str:
  if not os.path.exists(path):
    raise TableError(f"results table {path!r} does not exist; pass the path of a CSV written by training "
                     f"(WORKDIR/results/val.csv) or of a table in the authors' format with --format=standley")
  # utf-8-sig: spreadsheet programs start their CSV files with a byte-order mark.
  with open(path, encoding="utf-8-sig") as f:
    return f.read()


def read_csv(path: str) -> ResultsTable:
  return parse_csv(_read_text(path), source=path)


def read_replicas(path: str) -> Replicas:
  return parse_replicas(_read_text(path), source=path)


def read_standley(path: str, task_names: Sequence[str] = STANDLEY_TASK_NAMES) -> ResultsTable:
  return parse_standley(_read_text(path), task_names, source=path)


READERS = {"csv": read_csv, "standley": read_standley}


def read(path: str, format: str = "csv", task_names: Optional[Sequence[str]] = None) -> ResultsTable:
  """Reads a table in ``format`` ('csv' or 'standley')."""
  if format not in READERS:
    raise TableError(f"unknown table format {format!r}; known formats: {', '.join(READERS)}")
  if format == "standley":
    return read_standley(path, task_names or STANDLEY_TASK_NAMES)
  if task_names:
    raise TableError("task names come from the CSV header; --task_names is only for --format=standley")
  return read_csv(path)


def to_csv(table: Union[ResultsTable, Replicas], seed_column: Optional[bool] = None) -> str:
  """The CSV text, with the seed column when ``seed_column`` says so; by default when ``table`` is a
  ``Replicas`` with more than one replica of some network. (A shard of a seeded run may hold one
  replica per network, and still needs its seeds.)"""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  cells = lambda losses: [repr(float(losses[t])) if t in losses else "" for t in task_names]
  if seed_column is None:
    seed_column = isinstance(table, Replicas) and table.replicated
  if seed_column:
    replicas = table if isinstance(table, Replicas) else Replicas.from_table(table)
    task_names = replicas.table.task_names
    writer.writerow(["tasks", "cost", SEED_COLUMN, *task_names])
    for tasks, cost, seed, losses in replicas.rows():
      writer.writerow([TASK_SEPARATOR.join(tasks), repr(cost), seed, *cells(losses)])
    return out.getvalue()
  table = table.table if isinstance(table, Replicas) else table
  task_names = table.task_names
  writer.writerow(["tasks", "cost", *task_names])
  for row in range(table.num_networks):
    losses = {t: v for t, v in zip(task_names, table.losses[row]) if np.isfinite(v)}
    writer.writerow([TASK_SEPARATOR.join(table.network_tasks[row]), repr(float(table.costs[row])), *cells(losses)])
  return out.getvalue()


def write_csv(table: Union[ResultsTable, Replicas], path: str, seed_column: Optional[bool] = None) -> None:
  """Writes ``table`` atomically, so a reader never sees half a file (``seed_column``: see ``to_csv``)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  temporary = f"{path}.tmp-{os.getpid()}"
  with open(temporary, "w", encoding="utf-8") as f:
    f.write(to_csv(table, seed_column))
  os.replace(temporary, path)
