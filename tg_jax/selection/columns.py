"""Selection among HOA's predicted groups when they are too many to list: column generation.

Past 16 tasks the Higher Order Approximation's groups (every set of 3 or more tasks; 2^40 of them
at 40 tasks) cannot be written as table rows. The selection programme (``integer.py``) is solved
over the measured networks and a growing *pool* of predicted groups instead:

1. Column generation on the linear relaxation: its task prices ``pi`` and budget price ``lambda``
   price every group G as ``sum_{t in G} max(0, pi_t - score_G(t)) - lambda * cost``; groups with a
   positive price would improve the relaxation, and a local search (add, remove or swap one task)
   from the relaxation's groups and from each task's best triple finds them and adds them to the
   pool, until it finds none or the relaxation stops improving.
2. The integer programme over the measured networks and the pool (HiGHS): the answer.
3. A proven lower bound on the optimum over *all* groups, the better of two:
   - relaxed columns: the relaxation with one relaxed column per group size k, a network of cost 1
     that may be chosen several times and serves up to k tasks per copy, each at the mean of that
     task's k - 1 best pair losses (no real group of k tasks does better on any of its tasks). Each
     task of a relaxed column chooses its own best partners, so this bound is loose: 7-10% below
     the answers on 40 tasks (``benchmarks/selection.py``, case h).
   - Lagrangian (exact pricing), where the relaxed columns leave more than ``BOUND_TOLERANCE``: for
     any task prices pi, ``sum_t pi_t`` minus the most that networks within the budget can gain at
     those prices (a fractional knapsack over the measured networks' gains and the best group's
     gain, up to ``budget`` groups) bounds every choice from below. A branch-and-bound over task
     sets (``PairScores.best_gain``) finds the best group's gain at the relaxation's prices exactly,
     adding the groups it finds above the budget price to the pool until the bound is within
     ``BOUND_TOLERANCE`` of the relaxation. Under HOA the relaxation over every group is nearly
     integral, so at whole budgets the gap then states the answer's real distance (0.12% and less
     on 20 tasks, case i). The search grows about threefold per group size it must rule out; past
     ``PRICING_NODE_LIMIT`` nodes for one budget (40 tasks) it gives up, and later budgets keep
     the relaxed columns.

Every answer states its gap, (objective - bound) / objective.

numpy/scipy only.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Sequence

import numpy as np

from tg_jax.selection import hoa, integer, selector
from tg_jax.selection.tables import ResultsTable

# Column generation stops when the relaxation improved by less than this (relative) over
# ``STALL_ROUNDS`` rounds: further columns would only tighten a relaxation the bound does not use.
STALL_IMPROVEMENT = 1e-5
STALL_ROUNDS = 4
# Groups added to the pool per round, the best-priced first.
COLUMNS_PER_ROUND = 60
# A group must price above this to enter the pool (prices are in objective units).
PRICE_TOLERANCE = 1e-9
COLUMN_GENERATION = selector.COLUMN_GENERATION
# The exact pricing's branch-and-bound gives up after this many nodes over one budget's rounds (~70 us
# each on one core); the bound then falls back to the relaxed columns, and later budgets of the same
# call skip the search. 20 tasks need under 50,000; 40 tasks more than 64,000 for groups of 7 alone,
# about three times as many per size above.
PRICING_NODE_LIMIT = 100_000
# Exact pricing stops once the Lagrangian bound is within this (relative) of the relaxation over the
# pool: the stated gap then exceeds the relaxation's own by at most this much.
BOUND_TOLERANCE = 1e-3
PRICING_ROUNDS = 20


@dataclasses.dataclass(frozen=True)
class PairScores:
  """HOA's score of every group, from the pair networks, in objective units.

  ``pair[t, u]``: task t's score in the pair network {t, u} (its loss times the objective's weight
  over normaliser); a group's score on its task t is the mean of ``pair[t, u]`` over its other
  members u. ``caps[t]``: the highest score that may serve t (inf: none). Groups have
  ``min_size``..``max_size`` tasks and cost ``hoa.PAIR_COST``.
  """

  pair: np.ndarray
  caps: np.ndarray
  min_size: int
  max_size: int

  @property
  def num_tasks(self) -> int:
    return self.pair.shape[0]

  def scores(self, group: Sequence[int]) -> np.ndarray:
    """``[tasks]`` scores of a network on ``group``; inf outside it and above the caps."""
    members = np.asarray(sorted(group))
    result = np.full(self.num_tasks, np.inf)
    result[members] = self.pair[np.ix_(members, members)].sum(axis=1) / (members.size - 1)
    return np.where(result <= self.caps, result, np.inf)

  def relaxed_scores(self, size: int) -> np.ndarray:
    """``[tasks]`` the best score any group of ``size`` tasks gives each task (its ``size - 1`` best
    partners' mean); inf where even that is above its cap."""
    ranked = np.sort(np.where(np.eye(self.num_tasks, dtype=bool), np.inf, self.pair), axis=1)
    result = ranked[:, :size - 1].mean(axis=1)
    return np.where(result <= self.caps, result, np.inf)

  def best_gain(self, prices: np.ndarray, threshold: float,
                node_limit: Optional[int] = None) -> tuple[Optional[float], dict, int]:
    """The highest ``sum_t max(0, prices_t - score(t))`` over *every* group, by branch-and-bound over
    task sets: ``(bound, groups, nodes)``, where no group's sum exceeds ``bound`` (at least
    ``threshold``; None when the search stopped at ``node_limit`` nodes, default ``PRICING_NODE_LIMIT``),
    ``groups`` maps those found above ``threshold`` to their sums and ``nodes`` counts the search.

    Tasks are decided in a fixed order (include, then exclude). With a group's size k fixed, a task's
    score is the mean of ``pair`` over its k - 1 partners, so a node (S included, the rest C open)
    bounds each size separately: a member t in S gains ``max(0, a_t + x_t) / (k - 1)``, where
    ``a_t = sum_{u in S} (prices_t - pair[t, u])`` and ``x_t`` sums ``prices_t - pair[t, u]`` over
    the r = k - |S| tasks still to add; that convex function lies below its chord over x_t's range
    (r worst to r best candidates), which is linear in the added tasks. Each candidate u then adds
    its chord terms plus its own best gain (its r - 1 best partners among the candidates); the r best
    candidates bound the node. Caps are ignored in the bound (they only lower gains) and applied to
    every group evaluated.
    """
    n = self.num_tasks
    pair = self.pair
    node_limit = PRICING_NODE_LIMIT if node_limit is None else node_limit
    gains = prices[:, None] - pair                                   # [t, u]: t's gain per partner u
    np.fill_diagonal(gains, 0.0)
    off_diagonal = np.where(np.eye(n, dtype=bool), np.inf, pair)
    order = np.argsort(-(prices - off_diagonal.min(axis=1)), kind="stable")
    # smallest[i, t, r] / largest[i, t, r]: sum of t's r lowest / highest pair scores over the
    # candidates order[i:] other than t (inf / -inf where there are fewer than r).
    smallest = np.full((n + 1, n, n + 1), np.inf)
    largest = np.full((n + 1, n, n + 1), -np.inf)
    smallest[:, :, 0] = largest[:, :, 0] = 0.0
    for i in range(n + 1):
      candidates = order[i:]
      itself = np.zeros((n, candidates.size), dtype=bool)
      itself[candidates, np.arange(candidates.size)] = True
      values = pair[:, candidates]
      smallest[i, :, 1:candidates.size + 1] = np.cumsum(np.sort(np.where(itself, np.inf, values), axis=1), axis=1)
      largest[i, :, 1:candidates.size + 1] = np.cumsum(-np.sort(np.where(itself, np.inf, -values), axis=1), axis=1)
    sizes = np.arange(self.min_size, self.max_size + 1)
    state = {"best": threshold, "nodes": 0}
    found = {}

    def group_gain(members):
      scores = self.scores(members)[members]
      return float(np.sum(np.maximum(prices[members] - scores, 0.0)))

    def search(members, sums, i, open_sizes):
      state["nodes"] += 1
      if state["nodes"] > node_limit:
        raise _NodeLimit
      s = len(members)
      k = open_sizes[(open_sizes > s) & (open_sizes <= s + n - i)]
      if k.size == 0:
        return
      r = k - s
      candidates = order[i:]
      own = np.maximum(sums[candidates][None, :] + (r - 1)[:, None] * prices[candidates][None, :]
                       - smallest[i][candidates[None, :], (r - 1)[:, None]], 0.0)          # [sizes, candidates]
      constant = np.zeros(k.size)
      if s:
        inside = np.array(members)
        # x_t's range: its r best and r worst candidates; the chord over [lowest, highest].
        highest = r[:, None] * prices[inside][None, :] - smallest[i][inside[None, :], r[:, None]]
        lowest = r[:, None] * prices[inside][None, :] - largest[i][inside[None, :], r[:, None]]
        high, low = sums[inside] + highest, sums[inside] + lowest                           # [sizes, members]
        slope = np.where(high <= 0, 0.0, np.where(low >= 0, 1.0, high / np.maximum(highest - lowest, 1e-300)))
        constant = (np.maximum(low, 0.0) - slope * lowest).sum(axis=1)
        own = own + slope @ gains[np.ix_(inside, candidates)]
      ranked = np.cumsum(-np.sort(-own, axis=1), axis=1)
      bounds = (constant + ranked[np.arange(k.size), r - 1]) / (k - 1)
      open_sizes = k[bounds > state["best"]]
      if open_sizes.size == 0:
        return
      task = int(order[i])
      grown = members + [task]
      if len(grown) in open_sizes:
        gain = group_gain(grown)
        if gain > threshold:
          found[frozenset(grown)] = gain
        state["best"] = max(state["best"], gain)
      search(grown, sums + gains[:, task], i + 1, open_sizes)
      search(members, sums, i + 1, open_sizes)

    try:
      search([], np.zeros(n), 0, sizes)
    except _NodeLimit:
      return None, found, node_limit
    return state["best"], found, state["nodes"]

  def improve(self, start: Sequence[int], prices: np.ndarray) -> tuple[frozenset, float]:
    """Local search from ``start`` for the group with the highest ``sum_t max(0, prices_t - score(t))``:
    the best single addition, removal or swap of a task until none improves. Returns the group and
    that sum."""
    members = set(int(t) for t in start)
    pair, caps = self.pair, self.caps
    while True:
      inside = np.array(sorted(members))
      outside = np.array([u for u in range(self.num_tasks) if u not in members], dtype=np.int64)
      k = inside.size
      within = pair[np.ix_(inside, inside)]
      totals = within.sum(axis=1)                                     # [members] pair scores summed
      price_in = prices[inside][:, None]

      current = float(np.sum(_positive_gain(prices[inside] - totals / (k - 1), totals / (k - 1) <= caps[inside])))
      best, move = current + PRICE_TOLERANCE, None
      if outside.size and k < self.max_size:
        # Add u: members' totals grow by pair[t, u]; u's own score is its mean over the members.
        member_losses = (totals[:, None] + pair[np.ix_(inside, outside)]) / k             # [members, outside]
        new_losses = pair[np.ix_(outside, inside)].sum(axis=1) / k                         # [outside]
        values = (_positive_gain(price_in - member_losses, member_losses <= caps[inside][:, None]).sum(axis=0)
                  + _positive_gain(prices[outside] - new_losses, new_losses <= caps[outside]))
        j = int(np.argmax(values))
        if values[j] > best:
          best, move = float(values[j]), ({int(outside[j])}, set())
      if k > self.min_size:
        # Remove member r: the others' totals lose pair[t, r].
        losses = (totals[:, None] - within) / (k - 2)                                       # [members, removed]
        terms = _positive_gain(price_in - losses, losses <= caps[inside][:, None])
        np.fill_diagonal(terms, 0.0)
        values = terms.sum(axis=0)
        j = int(np.argmax(values))
        if values[j] > best:
          best, move = float(values[j]), (set(), {int(inside[j])})
      if outside.size:
        # Swap member r for u: [members t, removed r, added u].
        losses = (totals[:, None, None] - within[:, :, None] + pair[np.ix_(inside, outside)][:, None, :]) / (k - 1)
        terms = _positive_gain(price_in[:, :, None] - losses, losses <= caps[inside][:, None, None])
        terms[np.arange(k), np.arange(k), :] = 0.0
        added = (pair[np.ix_(outside, inside)].sum(axis=1)[None, :] - pair[np.ix_(outside, inside)].T) / (k - 1)
        values = terms.sum(axis=0) + _positive_gain(prices[outside][None, :] - added, added <= caps[outside][None, :])
        r, u = np.unravel_index(int(np.argmax(values)), values.shape)
        if values[r, u] > best:
          best, move = float(values[r, u]), ({int(outside[u])}, {int(inside[r])})
      if move is None:
        return frozenset(members), current
      members |= move[0]
      members -= move[1]


class _NodeLimit(Exception):
  """The exact pricing's branch-and-bound ran out of nodes."""


def _positive_gain(difference: np.ndarray, allowed: np.ndarray) -> np.ndarray:
  return np.where(allowed, np.maximum(difference, 0.0), 0.0)


def pair_scores(table: ResultsTable, objective: Optional[selector.Objective] = None,
                max_group_size: Optional[int] = None) -> PairScores:
  """HOA's ``PairScores`` from a table with every pair network, under ``objective``."""
  multipliers, caps = (objective or selector.Objective()).per_task(table)
  pair = hoa.pair_losses(table) * multipliers[:, None]
  np.fill_diagonal(pair, 0.0)
  max_size = table.num_tasks if max_group_size is None else min(max_group_size, table.num_tasks)
  return PairScores(pair, caps * multipliers, min_size=3, max_size=max_size)


def _first_pool(scores: PairScores) -> list[frozenset]:
  """Groups that serve every task together: the all-task group, or consecutive chunks of
  ``max_size`` tasks (the last one topped up to ``min_size`` from the chunk before)."""
  tasks = list(range(scores.num_tasks))
  size = scores.max_size
  chunks = [tasks[i:i + size] for i in range(0, len(tasks), size)]
  if len(chunks) > 1 and len(chunks[-1]) < scores.min_size:
    chunks[-1] = chunks[-2][-(scores.min_size - len(chunks[-1])):] + chunks[-1]
  return [frozenset(chunk) for chunk in chunks if len(chunk) >= scores.min_size]


def _best_triples(scores: PairScores) -> list[frozenset]:
  """Per task, the task and its two best pair partners: where the local search starts."""
  ranked = np.argsort(np.where(np.eye(scores.num_tasks, dtype=bool), np.inf, scores.pair), axis=1)
  return list(dict.fromkeys(frozenset((t, int(ranked[t, 0]), int(ranked[t, 1]))) for t in range(scores.num_tasks)))


@dataclasses.dataclass
class _Pool:
  """The measured networks' scores and the predicted groups generated so far (rows after them)."""

  measured_scores: np.ndarray
  measured_costs: np.ndarray
  scores: PairScores
  groups: list = dataclasses.field(default_factory=list)
  known: set = dataclasses.field(default_factory=set)

  def add(self, groups) -> None:
    for group in groups:
      if group not in self.known:
        self.known.add(group)
        self.groups.append(group)

  def all_scores(self) -> np.ndarray:
    predicted = [self.scores.scores(g) for g in self.groups]
    return np.concatenate([self.measured_scores, np.array(predicted).reshape(-1, self.scores.num_tasks)])

  def all_costs(self) -> np.ndarray:
    return np.concatenate([self.measured_costs, np.full(len(self.groups), hoa.PAIR_COST)])

  def programme(self) -> integer.Programme:
    return integer.Programme.build(self.all_scores(), self.all_costs())

  def generate(self, budget: float) -> int:
    """Column generation for ``budget``; returns its rounds."""
    history, starts, rounds = [], _best_triples(self.scores), 0
    measured = len(self.measured_costs)
    while True:
      rounds += 1
      relaxed = self.programme().relaxation(budget)
      if relaxed is None:
        return rounds
      value, prices, budget_price, chosen = relaxed
      history.append(value)
      if len(history) > STALL_ROUNDS and history[-STALL_ROUNDS - 1] - value <= STALL_IMPROVEMENT * abs(value):
        return rounds
      support = [self.groups[i - measured] for i in np.flatnonzero(chosen > 1e-9) if i >= measured]
      found = {}
      for start in support + starts:
        group, gain = self.scores.improve(start, prices)
        price = gain - budget_price * hoa.PAIR_COST
        if price > PRICE_TOLERANCE and group not in self.known:
          found[group] = max(price, found.get(group, -np.inf))
      if not found:
        return rounds
      self.add(sorted(found, key=lambda g: (-found[g], sorted(g)))[:COLUMNS_PER_ROUND])

  def relaxed_bound(self, budget: float) -> Optional[float]:
    """The relaxation over the measured networks, the pool and one relaxed column per group size:
    at most the optimum over every group (None: nothing within ``budget`` serves every task)."""
    sizes = np.arange(self.scores.min_size, self.scores.max_size + 1)
    relaxed = np.array([self.scores.relaxed_scores(int(k)) for k in sizes]).reshape(-1, self.scores.num_tasks)
    rows = len(self.measured_costs) + len(self.groups)
    capacities = np.concatenate([np.full(rows, np.inf), sizes.astype(np.float64)])
    copies = np.concatenate([np.ones(rows), np.full(sizes.size, max(budget, 0.0) / hoa.PAIR_COST)])
    programme = integer.Programme.build(np.concatenate([self.all_scores(), relaxed]),
                                        np.concatenate([self.all_costs(), np.full(sizes.size, hoa.PAIR_COST)]),
                                        capacities, copies)
    answer = programme.relaxation(budget)
    return None if answer is None else answer[0]

  def lagrangian_bound(self, budget: float, prices: np.ndarray, group_gain: float) -> float:
    """``sum_t prices_t - max { sum_i gain_i x_i : sum_i cost_i x_i <= budget, 0 <= x <= 1 }``, a lower
    bound on the optimum over every group for *any* ``prices`` (each task's cover constraint moved
    into the objective), where ``gain_i = sum_t max(0, prices_t - score[i, t])``. The measured
    networks enter with their own gains; every group with ``group_gain`` (no group gains more), as
    one item of up to ``budget / PAIR_COST`` units at cost ``PAIR_COST`` each. The maximum is a
    fractional knapsack: items by gain per cost, best first."""
    measured = np.sum(np.where(np.isfinite(self.measured_scores),
                               np.maximum(prices[None, :] - self.measured_scores, 0.0), 0.0), axis=1)
    gains = np.concatenate([measured, [group_gain * budget / hoa.PAIR_COST]])
    costs = np.concatenate([self.measured_costs, [budget]])
    taken, room = 0.0, budget
    for i in np.argsort(-gains / costs, kind="stable"):
      if room <= 0 or gains[i] <= 0:
        break
      share = min(1.0, room / costs[i])
      taken += share * gains[i]
      room -= share * costs[i]
    return float(np.sum(prices) - taken)

  def price_exactly(self, budget: float) -> tuple[Optional[float], int]:
    """Exact pricing: each round adds every group the branch-and-bound finds above the relaxation's
    budget price and computes the Lagrangian bound at the relaxation's task prices, until that bound
    is within ``BOUND_TOLERANCE`` of the relaxation or no group prices above it. Returns the best
    bound (None: the rounds ran past ``PRICING_NODE_LIMIT`` nodes first, or nothing fits) and the
    rounds."""
    bound, nodes_left = None, PRICING_NODE_LIMIT
    for rounds in range(1, PRICING_ROUNDS + 1):
      relaxed = self.programme().relaxation(budget)
      if relaxed is None:
        return None, rounds
      value, prices, budget_price, _ = relaxed
      # Searching only above the budget price plus a margin costs the bound at most half its tolerance.
      margin = 0.5 * BOUND_TOLERANCE * abs(value) * hoa.PAIR_COST / max(budget, hoa.PAIR_COST)
      group_gain, found, nodes = self.scores.best_gain(prices, budget_price * hoa.PAIR_COST + margin, nodes_left)
      if group_gain is None:
        return None, rounds
      nodes_left -= nodes
      # The search's own sums round; a relative 1e-12 above its best covers them.
      bound = max(bound if bound is not None else -np.inf,
                  self.lagrangian_bound(budget, prices, group_gain * (1 + 1e-12) + 1e-15))
      if not found or value - bound <= BOUND_TOLERANCE * abs(value):
        return bound, rounds
      self.add(sorted(found, key=lambda g: (-found[g], sorted(g)))[:COLUMNS_PER_ROUND])
    return bound, PRICING_ROUNDS


def select_many(measured: ResultsTable, budgets: Sequence[float], objective: Optional[selector.Objective] = None,
                max_group_size: Optional[int] = None, time_limit: Optional[float] = None, infeasible: str = "raise",
                progress: Optional[Callable[[str], None]] = None) -> tuple[ResultsTable, list]:
  """Selection among ``measured``'s networks (every pair at 1 SNT among them) and every HOA group of
  3 to ``max_group_size`` tasks (default: all), generated on demand.

  Returns the table of the measured networks followed by the generated groups (HOA's predicted
  losses) and, per budget, a ``selector.Solution`` over its rows whose ``gap`` is proven against
  every group (or, with ``infeasible="explain"``, a ``selector.NoFeasibleSolution``). ``time_limit``
  bounds each integer programme over the pool (seconds).
  """
  if infeasible not in ("raise", "explain"):
    raise ValueError(f"infeasible must be 'raise' or 'explain', got {infeasible!r}")
  if measured.num_tasks < 3:
    raise ValueError(f"HOA's groups have 3 or more tasks; this table has {measured.num_tasks}")
  objective = objective or selector.Objective()
  scores = pair_scores(measured, objective, max_group_size)
  pool = _Pool(objective.scores(measured), measured.costs, scores)
  pool.add(_first_pool(scores))
  answers = []
  pricing = True
  for index, budget in enumerate(float(b) for b in budgets):
    start = time.perf_counter()
    rounds = pool.generate(budget)
    answer = pool.programme().solve(budget, integer.EXACT_GAP, time_limit)
    relaxed = pool.relaxed_bound(budget)
    priced, bounded_by = None, "bound from relaxed columns"
    if (pricing and answer is not None and relaxed is not None
        and integer.relative_gap(answer.objective, relaxed) > BOUND_TOLERANCE):
      generated = len(pool.groups)
      priced, pricing_rounds = pool.price_exactly(budget)
      if priced is None:
        # Past the node limit: the search would likely run as long at the other budgets.
        bounded_by, pricing = "bound from relaxed columns (exact pricing past its node limit)", False
      elif priced > relaxed:
        bounded_by = f"exact pricing: {pricing_rounds} rounds"
      if len(pool.groups) > generated:
        answer = pool.programme().solve(budget, integer.EXACT_GAP, time_limit)
    bound = max((b for b in (priced, relaxed) if b is not None), default=None)
    answers.append(None if answer is None or bound is None else (answer, bound))
    if progress is not None:
      how = "infeasible" if answers[-1] is None else (
          f"gap {100 * integer.relative_gap(answer.objective, min(bound, answer.objective)):.2f}%")
      progress(f"selected budget {budget:g} SNT ({index + 1} of {len(budgets)}; {COLUMN_GENERATION}: {rounds} rounds, "
               f"{len(pool.groups)} groups generated, {bounded_by}, {how}, {time.perf_counter() - start:.1f} s)")
  pair = hoa.pair_losses(measured)
  table = measured.concat(ResultsTable(
      measured.task_names, tuple(tuple(measured.task_names[t] for t in sorted(g)) for g in pool.groups),
      np.full(len(pool.groups), hoa.PAIR_COST),
      np.array([hoa.predict_group(pair, tuple(sorted(g))) for g in pool.groups]).reshape(-1, measured.num_tasks)))
  all_scores = objective.scores(table)
  solutions = []
  for budget, found in zip(budgets, answers):
    if found is None:
      error = selector.NoFeasibleSolution(selector.infeasible_message(table, all_scores, float(budget)))
      if infeasible == "raise":
        raise error
      solutions.append(error)
      continue
    answer, bound = found
    networks = selector.without_idle(all_scores, answer.networks)
    solution = selector.make_solution(table, networks, float(budget), all_scores, method=COLUMN_GENERATION)
    solutions.append(dataclasses.replace(solution, gap=integer.relative_gap(solution.objective,
                                                                            min(bound, solution.objective))))
  return table, solutions
