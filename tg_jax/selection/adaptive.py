"""Adaptive training: train networks where they can still change the selection (numpy only).

Instead of a fixed list of subsets, rounds of successive halving within a budget of training:

0. The full-size single-task networks are trained to convergence (the surrogate needs one network
   on every task).
1. Each round fits the surrogate (``predictors``' ridge regression) on the converged networks and
   selects at every budget from them, from the networks screened so far (their early losses scaled
   to converged ones) and from the surrogate's predictions for every other group; the networks the
   selection chooses without converged results are where more training can change it.
2. Screening (the cheap signal, ESA's): up to ``screen`` of those without early losses are trained
   for ``early_fraction`` of the schedule; the selection is rerun with their early losses, scaled per
   task by the converged networks' ratio of converged to early loss.
3. Promotion: up to ``promote`` of the networks the new selection still chooses without converged
   results (most budgets first) are trained to convergence (from scratch).

The loop stops when every choice has converged results, or when the budget of training left cannot
pay for the next rung. The answer is the exact selection among the converged networks alone, so
every chosen network has been trained; its compute is every training the loop paid for.

Training happens behind an ``Oracle``: ``TableOracle`` replays a study whose every network was
trained (the regret table's use), ``tg_jax.training.adaptive`` trains for real.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Optional, Protocol, Sequence

import numpy as np

from tg_jax.selection import predictors, selector
from tg_jax.selection.tables import ResultsTable, TableError, has_size

Key = tuple  # tables.network_key: (frozenset of tasks, cost)


class Oracle(Protocol):
  """Trains networks (by ``tables.network_key``) and returns their validation losses, rows in
  ``keys``' order, each table over the tasks its networks solve."""

  def early(self, keys: Sequence[Key]) -> ResultsTable:
    """Losses after ``Settings.early_fraction`` of the schedule."""

  def converged(self, keys: Sequence[Key]) -> tuple[ResultsTable, ResultsTable]:
    """Losses of the fully trained networks, and their early losses (a full run passes that point)."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """The loop's knobs.

  Attributes:
    trainings: the budget, in trainings (one network for the whole schedule; any size); a network
      screened for ``early_fraction`` of the schedule costs that fraction.
    early_fraction: how much of the schedule screening trains (ESA's fraction).
    screen: networks screened per round.
    promote: networks trained to convergence per round (``screen / promote``: the halving rate).
    max_rounds: rounds at most.
  """

  trainings: float
  early_fraction: float = 0.2
  screen: int = 4
  promote: int = 2
  max_rounds: int = 20

  def __post_init__(self):
    if not 0 < self.early_fraction < 1:
      raise ValueError(f"adaptive early_fraction must be in (0, 1), got {self.early_fraction}")
    if self.screen < 1 or not 1 <= self.promote <= self.screen:
      raise ValueError(f"adaptive screen and promote must satisfy 1 <= promote <= screen, got screen={self.screen}, "
                       f"promote={self.promote}")
    if self.trainings <= 0 or self.max_rounds < 1:
      raise ValueError(f"adaptive trainings and max_rounds must be > 0, got {self.trainings} and {self.max_rounds}")


@dataclasses.dataclass(frozen=True)
class Round:
  """One round: the networks screened and those promoted (keys), and the trainings spent so far."""

  screened: tuple[Key, ...]
  promoted: tuple[Key, ...]
  trainings: float


@dataclasses.dataclass(frozen=True)
class Result:
  """The loop's outcome.

  Attributes:
    converged: validation losses of every network trained to convergence.
    early: early losses of every network screened or trained (a full training passes the early point).
    rounds: what each round trained.
    trainings: every training paid for (screens at ``early_fraction`` each).
    snt_trainings: the same, each weighted by its network's cost in SNT.
    stable: whether the last selection chose converged networks only (else the budget ran out).
  """

  converged: ResultsTable
  early: ResultsTable
  rounds: tuple[Round, ...]
  trainings: float
  snt_trainings: float
  stable: bool

  def describe(self) -> str:
    screened = sum(len(r.screened) for r in self.rounds)
    return (f"{self.converged.num_networks} networks trained to convergence and {screened} screened in "
            f"{len(self.rounds)} round(s){'' if self.stable else ' (budget spent before the choice was stable)'}")


def _keys(table: Optional[ResultsTable]) -> list[Key]:
  return [] if table is None else [table.network_key(r) for r in range(table.num_networks)]


def narrowed(table: ResultsTable, rows: Sequence[int]) -> ResultsTable:
  """Rows of ``table`` over the task columns they solve (as a run of a few networks writes them)."""
  rows = list(rows)
  columns = np.flatnonzero(np.isfinite(table.losses[rows]).any(axis=0))
  return ResultsTable(tuple(table.task_names[c] for c in columns), tuple(table.network_tasks[r] for r in rows),
                      table.costs[rows], table.losses[np.ix_(rows, columns)], table.helper_tasks)


def early_to_converged(converged: ResultsTable, early: ResultsTable) -> np.ndarray:
  """``[tasks]`` per task (``converged``'s columns), the median over networks with both of converged
  over early loss (1 where none has both): what scales a screened network's early losses."""
  rows = {early.network_key(r): r for r in range(early.num_networks)}
  pairs = [(r, rows[k]) for r, k in enumerate(_keys(converged)) if k in rows]
  ratio = np.ones(converged.num_tasks)
  if pairs:
    final = converged.losses[[a for a, _ in pairs]]
    first = converged.concat(early).losses[[converged.num_networks + b for _, b in pairs]]
    with np.errstate(invalid="ignore", divide="ignore"):
      ratios = np.where(np.isfinite(final) & np.isfinite(first) & (first > 0), final / first, np.nan)
    known = ~np.all(np.isnan(ratios), axis=0)
    ratio[known] = np.nanmedian(ratios[:, known], axis=0)
  return ratio


def _estimated(converged: ResultsTable, early: Optional[ResultsTable]) -> Optional[ResultsTable]:
  """The screened networks without converged results, their early losses scaled to converged ones
  (over ``converged``'s task columns)."""
  if early is None:
    return None
  trained = set(_keys(converged))
  rows = [r for r in range(early.num_networks) if early.network_key(r) not in trained]
  if not rows:
    return None
  scaled = narrowed(early, rows)
  ratio = early_to_converged(converged, early)
  columns = [converged.task_names.index(t) for t in scaled.task_names]
  return dataclasses.replace(scaled, losses=scaled.losses * ratio[columns][None, :])


def _choose(converged: ResultsTable, early: Optional[ResultsTable], candidates: Sequence[Key],
            budgets: Sequence[float], objective: Optional[selector.Objective]) -> dict[Key, int]:
  """Per network chosen at some budget without converged results, the number of budgets choosing it.

  The table: converged networks, screened ones (scaled early losses) and the surrogate's
  predictions for the other ``candidates`` groups of full size."""
  prediction = predictors.predict("surrogate", predictors.Measured(converged))
  known = set(_keys(converged))
  estimated = _estimated(converged, early)
  table = converged if estimated is None else converged.concat(estimated)
  known |= set(_keys(estimated))
  wanted = set(candidates)
  rows = [r for r in np.flatnonzero(prediction.predicted) if prediction.table.network_key(r) in wanted - known]
  if rows:
    table = table.concat(narrowed(prediction.table, rows))
  smaller = _optimistic_smaller_singles(converged, [k for k in candidates if k not in known])
  if smaller is not None:
    table = table.concat(smaller)
  trained = set(_keys(converged))
  counts: dict[Key, int] = {}
  for solution in selector.select_many(table, budgets, objective, infeasible="explain"):
    if isinstance(solution, selector.NoFeasibleSolution):
      continue
    for row in solution.networks:
      key = table.network_key(row)
      if key not in trained:
        counts[key] = counts.get(key, 0) + 1
  return counts


def _optimistic_smaller_singles(converged: ResultsTable, keys: Sequence[Key]) -> Optional[ResultsTable]:
  """Single-task networks smaller than 1 SNT (half-size singles) not yet screened, each at its task's
  full-size single's converged loss: no smaller network does better, so the selection chooses one
  (and has it screened) only where it could pay off."""
  full = {next(iter(k[0])): r for r, k in enumerate(_keys(converged)) if len(k[0]) == 1 and has_size(k[1], 1.0)}
  rows = [(k, full[next(iter(k[0]))]) for k in keys
          if len(k[0]) == 1 and not has_size(k[1], predictors.FULL_COST) and next(iter(k[0])) in full]
  if not rows:
    return None
  together = ResultsTable(converged.task_names, converged.network_tasks + tuple(converged.network_tasks[r] for _, r in rows),
                          np.concatenate([converged.costs, [k[1] for k, _ in rows]]),
                          np.concatenate([converged.losses, converged.losses[[r for _, r in rows]]]),
                          converged.helper_tasks)
  return narrowed(together, range(converged.num_networks, together.num_networks))


def _ranked(counts: dict[Key, int], among: Iterable[Key]) -> list[Key]:
  among = set(among)
  return sorted((k for k in counts if k in among), key=lambda k: (-counts[k], k[1], sorted(k[0])))


def run(oracle: Oracle, candidates: Sequence[Key], budgets: Sequence[float], settings: Settings,
        objective: Optional[selector.Objective] = None) -> Result:
  """The adaptive loop over ``candidates`` (every network it may train, by key: full-size groups and
  any smaller networks such as half-size singles) for ``budgets`` (SNT)."""
  singles = [k for k in candidates if len(k[0]) == 1 and has_size(k[1], predictors.FULL_COST)]
  tasks = set().union(*(k[0] for k in candidates)) if candidates else set()
  if {next(iter(k[0])) for k in singles} != tasks:
    raise TableError("adaptive training starts from a full-size single-task network on every task; the candidates "
                     "lack some (train every single task at size 1)")
  cost = {k: float(k[1]) for k in candidates}
  if len(singles) > settings.trainings:
    raise ValueError(f"adaptive training starts with {len(singles)} single-task networks, more than its budget of "
                     f"{settings.trainings:g} trainings; raise the budget")
  converged, early = oracle.converged(singles)
  spent, snt = float(len(singles)), sum(cost[k] for k in singles)
  rounds, stable = [], False
  for _ in range(settings.max_rounds):
    counts = _choose(converged, early, candidates, budgets, objective)
    if not counts:
      stable = True
      break
    screened_keys = set(_keys(early))
    affordable = int(np.floor((settings.trainings - spent) / settings.early_fraction + 1e-9))
    screen = _ranked(counts, set(counts) - screened_keys)[:min(settings.screen, affordable)]
    if screen:
      early = early.concat(oracle.early(screen))
      spent += settings.early_fraction * len(screen)
      snt += settings.early_fraction * sum(cost[k] for k in screen)
      counts = _choose(converged, early, candidates, budgets, objective)
    promote = _ranked(counts, counts)[:min(settings.promote, int(np.floor(settings.trainings - spent + 1e-9)))]
    if promote:
      trained, trained_early = oracle.converged(promote)
      converged, early = converged.concat(trained), early.concat(trained_early)
      spent += len(promote)
      snt += sum(cost[k] for k in promote)
    if not screen and not promote:
      break  # the budget cannot pay for the next rung
    rounds.append(Round(tuple(screen), tuple(promote), spent))
  else:
    stable = not _choose(converged, early, candidates, budgets, objective)
  return Result(converged, early, tuple(rounds), spent, snt, stable)


@dataclasses.dataclass(frozen=True)
class TableOracle:
  """Replays a study whose networks were all trained: ``early`` from its ESA table, ``converged``
  from its validation table (what the loop would have measured)."""

  val: ResultsTable
  esa: ResultsTable

  def _rows(self, table: ResultsTable, keys: Sequence[Key], what: str) -> ResultsTable:
    rows = {table.network_key(r): r for r in range(table.num_networks)}
    missing = [" + ".join(sorted(k[0])) + f" @ {k[1]:g}" for k in keys if k not in rows]
    if missing:
      raise TableError(f"the {what} table lacks networks the adaptive loop trains: {', '.join(missing)}; replay it "
                       f"on a study that trained every candidate (experiments/all_subsets.py)")
    return narrowed(table, [rows[k] for k in keys])

  def early(self, keys: Sequence[Key]) -> ResultsTable:
    return self._rows(self.esa, keys, "ESA")

  def converged(self, keys: Sequence[Key]) -> tuple[ResultsTable, ResultsTable]:
    return self._rows(self.val, keys, "validation"), self._rows(self.esa, keys, "ESA")
