"""The baselines of paper section 4.3, from the same validation and test tables.

Every baseline is a set of networks scored like a selected solution: each task is served by the
chosen network that is best for it on validation, and the test total sums those networks' test
losses.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from tg_jax.selection.selector import COST_TOLERANCE, assign
from tg_jax.selection.tables import SIZE_TOLERANCE, ResultsTable

# The pessimal search stops after this many nodes and says its answer may not be the worst.
PESSIMAL_MAX_NODES = 200_000


@dataclasses.dataclass(frozen=True)
class Scored:
  """A baseline's networks (table rows) and totals."""

  networks: tuple[int, ...]
  val_loss: float
  test_loss: Optional[float]
  cost: float


def score(val: ResultsTable, test: Optional[ResultsTable], networks: Sequence[int]) -> Scored:
  """Totals of a set of networks: tasks served by their best network on validation."""
  networks = tuple(sorted(int(n) for n in networks))
  assignment = list(assign(val.losses, networks))
  tasks = np.arange(val.num_tasks)
  test_loss = None if test is None else float(np.sum(test.losses[assignment, tasks]))
  return Scored(networks, float(np.sum(val.losses[assignment, tasks])), test_loss,
                float(np.sum(val.costs[list(networks)])))


def all_task_network(val: ResultsTable, test: Optional[ResultsTable], budget: float) -> Optional[Scored]:
  """Traditional multi-task learning: the largest network trained on every task that fits."""
  rows = [r for r, tasks in enumerate(val.network_tasks)
          if len(tasks) == val.num_tasks and val.costs[r] <= budget + COST_TOLERANCE]
  if not rows:
    return None
  row = min(rows, key=lambda r: (-val.costs[r], float(np.sum(val.losses[r])), r))
  return score(val, test, [row])


def independent_networks(val: ResultsTable, test: Optional[ResultsTable], budget: float) -> Optional[Scored]:
  """One single-task network per task, all of the largest size available for every task that fits
  (a size fits when its measured cost is within ``SIZE_TOLERANCE`` of a share of the budget)."""
  by_task_and_cost: dict = {}
  for row, tasks in enumerate(val.network_tasks):
    if len(tasks) == 1:
      key = (tasks[0], round(float(val.costs[row]), 9))
      best = by_task_and_cost.get(key)
      if best is None or val.losses[row].min() < val.losses[best].min():
        by_task_and_cost[key] = row
  sizes = sorted({cost for _, cost in by_task_and_cost}, reverse=True)
  for size in sizes:
    # Sizes are nominal: five networks measured at 0.8018 SNT each (integer channel counts) are the
    # paper's 4/5-SNT independent networks at budget 4.
    if size * val.num_tasks > budget * (1 + SIZE_TOLERANCE) + COST_TOLERANCE:
      continue
    rows = [by_task_and_cost.get((task, size)) for task in val.task_names]
    if all(row is not None for row in rows):
      return score(val, test, rows)
  return None


def _random_fill(costs: np.ndarray, serves: np.ndarray, budget: float, rng: np.random.Generator):
  """The authors' random solution: networks in random order, each taken if it still fits."""
  remaining, chosen = budget, []
  cheapest = costs.min()
  for network in rng.permutation(len(costs)):
    if costs[network] <= remaining + COST_TOLERANCE:
      chosen.append(int(network))
      remaining -= costs[network]
      if remaining + COST_TOLERANCE < cheapest:
        break
  if chosen and serves[chosen].any(axis=0).all():
    return chosen
  return None


@dataclasses.dataclass(frozen=True)
class RandomBaseline:
  """Means over ``samples`` random valid solutions (``attempts`` random fills were drawn)."""

  val_loss: Optional[float]
  test_loss: Optional[float]
  samples: int
  attempts: int


def random_fills(val: ResultsTable, budget: float, samples: int = 1000, seed: int = 0,
                 max_attempts_per_sample: int = 100) -> tuple[list[tuple[int, ...]], int]:
  """Up to ``samples`` random valid solutions (rows, ascending) and the fills drawn to find them;
  fills that leave a task unserved are redrawn."""
  rng = np.random.default_rng(seed)
  serves = val.solves
  fills, attempts = [], 0
  while len(fills) < samples and attempts < samples * max_attempts_per_sample:
    attempts += 1
    chosen = _random_fill(val.costs, serves, budget, rng)
    if chosen is not None:
      fills.append(tuple(sorted(chosen)))
  return fills, attempts


def random_solutions(val: ResultsTable, test: Optional[ResultsTable], budget: float, samples: int = 1000,
                     seed: int = 0, max_attempts_per_sample: int = 100) -> RandomBaseline:
  """Mean of ``samples`` random valid solutions (``random_fills``)."""
  fills, attempts = random_fills(val, budget, samples, seed, max_attempts_per_sample)
  if not fills:
    return RandomBaseline(None, None, 0, attempts)
  scored = [score(val, test, fill) for fill in fills]
  test_loss = None if test is None else float(np.mean([s.test_loss for s in scored]))
  return RandomBaseline(float(np.mean([s.val_loss for s in scored])), test_loss, len(fills), attempts)


@dataclasses.dataclass(frozen=True)
class PessimalBaseline:
  scored: Optional[Scored]
  exact: bool
  nodes: int


def pessimal_solution(val: ResultsTable, test: Optional[ResultsTable], budget: float,
                      max_nodes: int = PESSIMAL_MAX_NODES) -> PessimalBaseline:
  """The worst valid solution, with valid meaning what the random baseline draws: a set of networks
  within budget that serves every task and leaves no room for one more network. Its validation
  total, each task served by its best chosen network, is the highest of all such sets.

  Sets are enumerated once each (networks in table order); a branch is cut when even the worst loss
  each unserved task could still get cannot lift it above the worst set found.
  """
  losses, costs = val.losses, val.costs
  serves = val.solves
  num_networks = val.num_networks
  state = {"best": -np.inf, "networks": None, "nodes": 0}

  def descend(chosen: list[int], current: np.ndarray, remaining: float, start: int) -> None:
    state["nodes"] += 1
    if state["nodes"] > max_nodes:
      return
    fits = costs <= remaining + COST_TOLERANCE
    later = np.zeros(num_networks, dtype=bool)
    later[start:] = True
    options = np.flatnonzero(fits & later)
    unserved = ~np.isfinite(current)
    if options.size == 0:
      unchosen = np.ones(num_networks, dtype=bool)
      unchosen[chosen] = False
      if not unserved.any() and not (fits & unchosen).any():
        total = float(np.sum(current))
        if total > state["best"]:
          state["best"], state["networks"] = total, list(chosen)
      return
    worst_possible = np.max(np.where(serves[options], losses[options], -np.inf), axis=0)
    bound = float(np.sum(np.where(unserved, worst_possible, current)))
    if not np.isfinite(bound) or bound <= state["best"]:
      return
    for network in options:
      descend(chosen + [int(network)], np.minimum(current, losses[network]), remaining - costs[network],
              int(network) + 1)

  descend([], np.full(val.num_tasks, np.inf), budget, 0)
  exact = state["nodes"] <= max_nodes
  scored = None if state["networks"] is None else score(val, test, state["networks"])
  return PessimalBaseline(scored, exact, min(state["nodes"], max_nodes))
