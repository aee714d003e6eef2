"""How sure a selection is, from seed replicas: intervals, the probability that a grouping is optimal,
and paired differences against the baselines (numpy and scipy only).

Every network was trained with several seeds (``tables.Replicas``; validation and test losses of one
replica come from the same parameters). For each budget:

- The grouping is the exact selection on each network's mean over its replicas (``study.run``).
- A bootstrap resamples each network's replicas with replacement (validation and test together) and
  re-runs the exact selection on every resample. The share of resamples that choose the grouping is
  its probability of being optimal; the other groupings chosen are its alternatives.
- Intervals use Student's t over per-replicate totals: replica ``r`` of every network is one
  independent replicate of the whole study, so the grouping's total under replicate ``r`` is one draw
  of "train this grouping once". A percentile bootstrap over 3-5 seeds would be too narrow.
- The winner's curse: the grouping won on validation partly by lucky training noise that its test
  losses share. Re-running the selection inside each resample measures that optimism (the resampled
  winner's test total against its total on all replicas); the intervals are shifted by it.
- Differences against a baseline (all-task network, independent networks, Random) are paired: the
  same replicates score both, so their shared noise cancels.

What the intervals cover: training-seed noise and the noise of each replica's own evaluation. The
sampling noise of a fixed evaluation set, shared by every replica, is not in per-network tables.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Optional, Sequence

import numpy as np
from scipy import stats

from tg_jax.selection import selector
from tg_jax.selection.tables import Replicas, ResultsTable, TableError

CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 1000
MAX_ALTERNATIVES = 3

# A grouping: the table rows of its networks, ascending.
Grouping = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Difference:
  """A grouping against a baseline at one budget: ``baseline total - grouping total`` (positive: the
  grouping is better), its interval, and both relative to the baseline's total."""

  baseline: str
  difference: float
  interval: tuple[float, float]
  relative: float
  relative_interval: tuple[float, float]

  @property
  def resolved(self) -> bool:
    """Whether the interval excludes zero: the data say which is better."""
    return self.interval[0] > 0 or self.interval[1] < 0

  def to_json(self) -> dict[str, Any]:
    return {"baseline": self.baseline, "difference": self.difference, "interval": list(self.interval),
            "relative": self.relative, "relative_interval": list(self.relative_interval), "resolved": self.resolved}

  def describe(self) -> str:
    low, high = (100 * v for v in self.relative_interval)
    if not self.resolved:
      return f"indistinguishable from {self.baseline} ({100 * self.relative:+.1f}% [{low:+.1f}, {high:+.1f}])"
    verb = "beats" if self.difference > 0 else "loses to"
    return f"{verb} {self.baseline} by {abs(100 * self.relative):.1f}% [{low:+.1f}, {high:+.1f}]"


@dataclasses.dataclass(frozen=True)
class Alternative:
  """A grouping the bootstrap chose instead, with the share of resamples that chose it."""

  networks: tuple[str, ...]
  probability: float

  def to_json(self) -> dict[str, Any]:
    return {"networks": list(self.networks), "probability": self.probability}


@dataclasses.dataclass(frozen=True)
class Uncertainty:
  """How sure one budget's selection is.

  Attributes:
    replicates: replicas per network behind the intervals (None intervals when fewer than 2).
    val_loss_interval, test_loss_interval: 95% intervals of the grouping's expected totals.
    optimism: the winner's-curse correction added to the test total (and its interval).
    probability_optimal: share of resamples whose exact selection is this grouping.
    alternatives: the groupings most often chosen instead.
    differences: paired differences against the baselines.
  """

  replicates: int
  val_loss_interval: Optional[tuple[float, float]]
  test_loss_interval: Optional[tuple[float, float]]
  optimism: float
  probability_optimal: float
  alternatives: tuple[Alternative, ...]
  differences: tuple[Difference, ...]

  def to_json(self) -> dict[str, Any]:
    interval = lambda value: None if value is None else list(value)
    return {"replicates": self.replicates, "val_loss_interval": interval(self.val_loss_interval),
            "test_loss_interval": interval(self.test_loss_interval), "optimism": self.optimism,
            "probability_optimal": self.probability_optimal,
            "alternatives": [a.to_json() for a in self.alternatives],
            "differences": [d.to_json() for d in self.differences]}


def _t_interval(values: np.ndarray, shift: float = 0.0,
                evaluation_variance: float = 0.0) -> Optional[tuple[float, float]]:
  """Student-t interval of the mean of ``values`` (per-replicate totals), shifted by ``shift``;
  ``evaluation_variance``: the variance the evaluation set's own sampling adds to that mean (shared
  by every replicate, so the spread over replicates cannot show it)."""
  values = np.asarray(values, dtype=np.float64)
  if values.size < 2:
    return None
  seed_variance = values.var(ddof=1) / values.size
  # Welch-Satterthwaite: the example bootstrap's variance is known from many resamples, so only the
  # seeds' share of the variance carries their few degrees of freedom.
  freedom = (seed_variance + evaluation_variance) ** 2 / max(seed_variance ** 2 / (values.size - 1), 1e-300)
  standard_error = np.sqrt(seed_variance + evaluation_variance)
  half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, min(freedom, 1e6)) * standard_error)
  centre = float(values.mean()) + shift
  return (centre - half, centre + half)


def risk_table(replicas: Replicas, quantile: float) -> ResultsTable:
  """Each network's loss on each task at an upper ``quantile`` of its replicas' spread (normal
  approximation: mean + z_q * standard deviation): selecting on it prefers networks whose one
  training run is reliably good over ones good on average."""
  if not 0.5 <= quantile < 1:
    raise ValueError(f"risk quantile must be in [0.5, 1), got {quantile:g}")
  if replicas.counts.min() < 2:
    raise TableError("selecting by a risk quantile needs at least 2 replicas (seeds) of every network")
  spread = np.nanstd(np.where(np.isfinite(replicas.samples), replicas.samples, np.nan), axis=1, ddof=1)
  losses = replicas.table.losses + stats.norm.ppf(quantile) * np.where(np.isfinite(spread), spread, 0.0)
  return dataclasses.replace(replicas.table, losses=losses)


def _resampled_means(samples: np.ndarray, counts: np.ndarray, draws: np.ndarray) -> np.ndarray:
  """``[resamples, networks, tasks]`` means of each network's replicas picked by ``draws``
  (``[resamples, networks, replicas]`` uniform numbers in [0, 1); a network draws as many replicas
  as it has). ``samples``: ``[networks, replicas, tasks]``, or one such array per resample."""
  samples = np.broadcast_to(samples, draws.shape[:1] + samples.shape[-3:])
  picks = np.floor(draws * counts[None, :, None]).astype(int)
  picked = np.take_along_axis(samples, picks[..., None], axis=2)  # [resamples, networks, replicas, tasks]
  used = np.arange(samples.shape[2])[None, None, :] < counts[None, :, None]
  means = np.sum(np.where(used[..., None], picked, 0.0), axis=2) / counts[None, :, None]
  # A resample of n replicas varies (n - 1) / n as much as a fresh draw would; with 3-5 seeds that
  # understates the winner's curse, so deviations from the mean are scaled back up.
  with np.errstate(invalid="ignore"):  # inf - inf where a network does not solve a task
    centre = np.sum(np.where(used[..., None], samples, 0.0), axis=2) / counts[None, :, None]
    inflation = np.sqrt(counts / np.maximum(counts - 1, 1))[None, :, None]
    return np.where(np.isfinite(means), centre + inflation * (means - centre), means)


@dataclasses.dataclass(frozen=True)
class Examples:
  """Per-example losses of every replica, ``[networks, replicas, examples, tasks]`` for validation
  and test (NaN where a network does not solve a task or has fewer replicas): the bootstrap then
  resamples the evaluation examples too, the same examples for every network."""

  val: np.ndarray
  test: np.ndarray

  def reweighted(self, split: str, weights: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """``[resamples, networks, replicas, tasks]`` losses under example ``weights`` ``[resamples,
    examples]`` (each row summing to 1); ``samples``' inf (unsolved) and NaN (no replica) kept."""
    losses = getattr(self, split)
    weighted = np.einsum("be,nret->bnrt", weights, np.nan_to_num(losses, nan=0.0, posinf=0.0))
    return np.where(np.isfinite(samples)[None], weighted, samples[None])


def _grouping_total(losses: np.ndarray, grouping: Grouping) -> tuple[float, tuple[int, ...]]:
  """A grouping's total on ``losses`` ``[networks, tasks]``, each task served by its best member."""
  assignment = selector.assign(losses, grouping)
  return float(np.sum(losses[list(assignment), np.arange(losses.shape[1])])), assignment


def _replicate_totals(samples: np.ndarray, assignment: Sequence[int], replicates: int) -> np.ndarray:
  """``[replicates]`` the total of an assignment (task -> row) under each replicate."""
  tasks = np.arange(samples.shape[2])
  return np.sum(samples[np.asarray(assignment)[:, None], np.arange(replicates)[None, :], tasks[:, None]], axis=0)


@dataclasses.dataclass(frozen=True)
class Baseline:
  """A baseline as sets of rows scored like a grouping: one set (all-task, independent) or many whose
  totals are averaged (Random's fills)."""

  name: str
  groupings: tuple[Grouping, ...]


@dataclasses.dataclass(frozen=True)
class _Resamples:
  """Bootstrap resamples of the replicas: ``[resamples, networks, tasks]`` validation and test means,
  and with per-example losses, each replica's means under each example resample ``{split:
  [resamples, networks, replicas, tasks]}`` (the evaluation set's noise)."""

  val_means: np.ndarray
  test_means: np.ndarray
  replica_means: Optional[dict[str, np.ndarray]]


def _resample(val: Replicas, test: Replicas, resamples: int, seed: int,
              examples: Optional[Examples]) -> _Resamples:
  """The resamples ``assess`` and ``choice_frequencies`` draw: the same ones for the same ``seed``."""
  rng = np.random.default_rng(seed)
  draws = rng.random((resamples, val.table.num_networks, val.samples.shape[1]))
  val_samples, test_samples = val.samples, test.samples
  replica_means = None
  if examples is not None:
    weights = {split: rng.multinomial(losses.shape[2], np.full(losses.shape[2], 1 / losses.shape[2]), resamples)
               / losses.shape[2] for split, losses in (("val", examples.val), ("test", examples.test))}
    val_samples = examples.reweighted("val", weights["val"], val.samples)
    test_samples = examples.reweighted("test", weights["test"], test.samples)
    replica_means = {"val": np.nanmean(val_samples, axis=2), "test": np.nanmean(test_samples, axis=2)}
  return _Resamples(_resampled_means(val_samples, val.counts, draws), _resampled_means(test_samples, val.counts, draws),
                    replica_means)


def choice_frequencies(val: Replicas, test: Replicas, budgets: Sequence[float],
                       choose: Callable[[np.ndarray, Sequence[float]], list[list[Optional[Grouping]]]],
                       resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                       examples: Optional[Examples] = None) -> list[collections.Counter]:
  """Per budget, how many of ``resamples`` bootstrap resamples ``choose`` each grouping on (the
  resamples ``assess`` draws with the same ``seed``): with the exact selection on the converged
  losses as ``choose``, a grouping's count over ``resamples`` is its probability of being optimal."""
  chosen = choose(_resample(val, test, resamples, seed, examples).val_means, budgets)
  return [collections.Counter(choice[i] for choice in chosen if choice[i] is not None) for i in range(len(budgets))]


def assess(val: Replicas, test: Replicas, budgets: Sequence[float], groupings: Sequence[Optional[Grouping]],
           choose: Callable[[np.ndarray, Sequence[float]], list[list[Optional[Grouping]]]],
           baselines: Sequence[Sequence[Baseline]] = (), resamples: int = DEFAULT_RESAMPLES,
           seed: int = 0, examples: Optional[Examples] = None) -> list[Optional[Uncertainty]]:
  """The uncertainty of each budget's grouping.

  Args:
    val, test: every replica's validation and test losses, aligned (same networks and seeds).
    budgets: the budgets.
    groupings: per budget, the rows chosen on the means (None: infeasible, or networks not trained).
    choose: the selection that made ``groupings``, re-run on the resamples' validation means:
      ``choose(means [resamples, networks, tasks], budgets)`` -> per resample and budget the chosen
      rows (None where it has no answer).
    baselines: per budget, the baselines to difference against.
    resamples: bootstrap resamples.
    seed: of the resampling.
    examples: per-example losses; then each resample also redraws the evaluation examples, and the
      intervals add the evaluation set's sampling variance.
  """
  counts = val.counts
  drawn = _resample(val, test, resamples, seed, examples)
  replica_means = drawn.replica_means

  def evaluation_variance(split: str, assignments: Sequence[tuple[float, Sequence[int]]]) -> float:
    """Variance over example resamples of a signed sum of assignments' totals (replica means)."""
    if replica_means is None:
      return 0.0
    tasks = np.arange(val.table.num_tasks)
    totals = sum(sign * np.sum(replica_means[split][:, list(a), tasks], axis=1) for sign, a in assignments)
    return float(np.var(totals, ddof=1))

  val_means, test_means = drawn.val_means, drawn.test_means
  chosen = choose(val_means, budgets)
  results = []
  for i, grouping in enumerate(groupings):
    if grouping is None:
      results.append(None)
      continue
    # Replicates: the replicas every network of the grouping (and of the baselines) has.
    members = set(grouping) | {r for b in (baselines[i] if baselines else ()) for g in b.groupings for r in g}
    replicates = int(min(counts[list(members)]))
    assignment = _grouping_total(val.table.losses, grouping)[1]
    frequencies = collections.Counter(choice[i] for choice in chosen if choice[i] is not None)
    val_optimism, test_optimism = [], []
    for b, choice in enumerate(chosen):
      if choice[i] is None:
        continue
      # The resample's winner scored on all replicas against on the resample that chose it.
      val_b, assignment_b = _grouping_total(val_means[b], choice[i])
      tasks = np.arange(val.table.num_tasks)
      val_optimism.append(float(np.sum(val.table.losses[list(assignment_b), tasks])) - val_b)
      test_optimism.append(float(np.sum(test.table.losses[list(assignment_b), tasks])
                                 - np.sum(test_means[b][list(assignment_b), tasks])))
    val_shift = float(np.mean(val_optimism)) if val_optimism else 0.0
    test_shift = float(np.mean(test_optimism)) if test_optimism else 0.0
    grouping_totals = _replicate_totals(test.samples, assignment, replicates)
    differences = []
    for baseline in (baselines[i] if baselines else ()):
      if set(baseline.groupings) == {grouping}:
        continue  # the baseline is this grouping (e.g. the all-task network at budget 1)
      baseline_assignments = [_grouping_total(val.table.losses, g)[1] for g in baseline.groupings]
      baseline_totals = np.mean([_replicate_totals(test.samples, a, replicates) for a in baseline_assignments], axis=0)
      # The grouping's optimism lowers its own total only: the baseline was not chosen on this data.
      paired = baseline_totals - grouping_totals - test_shift
      signed = [(1.0 / len(baseline_assignments), a) for a in baseline_assignments] + [(-1.0, assignment)]
      interval = _t_interval(paired, evaluation_variance=evaluation_variance("test", signed))
      if interval is None:
        continue
      reference = float(np.mean(baseline_totals))
      differences.append(Difference(baseline.name, float(np.mean(paired)), interval, float(np.mean(paired)) / reference,
                                    (interval[0] / reference, interval[1] / reference)))
    alternatives = tuple(Alternative(tuple(val.table.network_label(r) for r in g), count / resamples)
                         for g, count in frequencies.most_common() if g != grouping)[:MAX_ALTERNATIVES]
    results.append(Uncertainty(
        replicates=replicates,
        val_loss_interval=_t_interval(_replicate_totals(val.samples, assignment, replicates), val_shift,
                                      evaluation_variance("val", [(1.0, assignment)])),
        test_loss_interval=_t_interval(grouping_totals, test_shift, evaluation_variance("test", [(1.0, assignment)])),
        optimism=test_shift,
        probability_optimal=frequencies[grouping] / resamples, alternatives=alternatives,
        differences=tuple(differences)))
  return results


class TooManyStructures(ValueError):
  """The batched selection would enumerate too many structures; select resample by resample."""


class BatchSelector:
  """Exact selection on many loss tables that share their networks and costs (bootstrap resamples).

  Any selection serves the tasks in blocks, each block by one chosen network. The networks of one
  cost that solve a block are interchangeable but for their losses, so a selection is a *structure*
  (a partition of the tasks into blocks, a cost for each block) plus, per block, the best network of
  that cost: few structures for few tasks (Bell(5) partitions), all of them scored for every
  resample at once. A structure that uses one network for two blocks over-counts its cost, so it
  never beats the structure that merges the blocks: the minimum is the exact optimum.
  """

  def __init__(self, network_tasks: Sequence[Sequence[str]], costs: np.ndarray, task_names: Sequence[str],
               max_structures: int = 20_000):
    num_tasks = len(task_names)
    column = {t: j for j, t in enumerate(task_names)}
    # Helper tasks (``ResultsTable.helper_tasks``) have no column: a network serves only its others.
    masks = np.asarray([sum(1 << column[t] for t in tasks if t in column) for tasks in network_tasks])
    classes = np.unique(np.round(np.asarray(costs, dtype=np.float64), 9))
    class_of = np.searchsorted(classes, np.round(np.asarray(costs, dtype=np.float64), 9))
    # (block, cost class) pairs some network can serve: its rows and the block's tasks.
    self._pairs: list[tuple[np.ndarray, np.ndarray]] = []
    pair_index: dict[tuple[int, int], int] = {}
    for block in range(1, 1 << num_tasks):
      for cost_class in range(classes.size):
        rows = np.flatnonzero(((masks & block) == block) & (class_of == cost_class))
        if rows.size:
          pair_index[(block, cost_class)] = len(self._pairs)
          self._pairs.append((rows, np.asarray([j for j in range(num_tasks) if block >> j & 1])))
    by_block: dict[int, list[int]] = collections.defaultdict(list)
    for (block, cost_class) in pair_index:
      by_block[block].append(cost_class)
    structures: list[tuple[int, ...]] = []

    def partitions(remaining: int, chosen: tuple[int, ...]) -> None:
      if len(structures) > max_structures:
        raise TooManyStructures(f"more than {max_structures} task partitions to score")
      if not remaining:
        structures.append(chosen)
        return
      lowest = remaining & -remaining
      block = remaining
      while block:  # every sub-mask of the remaining tasks that holds the lowest one
        if block & lowest:
          for cost_class in by_block.get(block, ()):
            partitions(remaining & ~block, chosen + (pair_index[(block, cost_class)],))
        block = (block - 1) & remaining

    partitions((1 << num_tasks) - 1, ())
    pair_cost = np.asarray([classes[class_of[rows[0]]] for rows, _ in self._pairs])
    structure_costs = np.asarray([pair_cost[list(s)].sum() for s in structures])
    order = np.argsort(structure_costs, kind="stable")  # ties go to the cheaper structure
    self._structures = [structures[i] for i in order]
    self._costs = structure_costs[order]
    self._incidence = np.zeros((len(self._structures), len(self._pairs)))
    for i, structure in enumerate(self._structures):
      self._incidence[i, list(structure)] = 1.0

  def select(self, scores: np.ndarray, budgets: Sequence[float]) -> list[list[Optional[Grouping]]]:
    """Per resample and budget, the chosen rows (None: nothing within the budget serves every task).

    Args:
      scores: ``[resamples, networks, tasks]`` objective terms (inf where a network may not serve).
    """
    best = np.empty((scores.shape[0], len(self._pairs)))
    best_row = np.empty((scores.shape[0], len(self._pairs)), dtype=int)
    for p, (rows, block_tasks) in enumerate(self._pairs):
      block_scores = scores[:, rows][:, :, block_tasks].sum(axis=2)
      choice = np.argmin(block_scores, axis=1)
      best_row[:, p] = rows[choice]
      best[:, p] = block_scores[np.arange(scores.shape[0]), choice]
    # inf * 0 would be NaN: a pair no network can serve (inf) stays out of the products.
    finite = np.isfinite(best)
    totals = np.where(finite, best, 0.0) @ self._incidence.T
    totals[(~finite).astype(float) @ self._incidence.T > 0] = np.inf
    chosen = [[None] * len(budgets) for _ in range(scores.shape[0])]
    for i, budget in enumerate(budgets):
      feasible = self._costs <= budget + selector.COST_TOLERANCE
      if not feasible.any():
        continue
      winners = np.argmin(np.where(feasible[None, :], totals, np.inf), axis=1)
      for b, winner in enumerate(winners):
        if np.isfinite(totals[b, winner]):
          chosen[b][i] = tuple(sorted({int(best_row[b, p]) for p in self._structures[winner]}))
    return chosen


def fixed_interval(val: Replicas, test: Replicas, groupings: Sequence[Grouping]) -> Optional[tuple[float, float]]:
  """95% interval of the mean test total of ``groupings`` (one grouping, or Random's fills) chosen
  without these losses (a baseline, or a method that selected on other data such as ESA or TAG):
  Student-t over per-replicate totals, each task served by the grouping's best network on
  validation means."""
  if not groupings:
    return None
  replicates = int(min(val.counts[list({r for g in groupings for r in g})]))
  totals = np.mean([_replicate_totals(test.samples, _grouping_total(val.table.losses, g)[1], replicates)
                    for g in groupings], axis=0)
  return _t_interval(totals)


def replicate_values(replicas: Replicas, statistic: Callable[[ResultsTable], np.ndarray]) -> np.ndarray:
  """``statistic`` of the table of each replicate ``[replicates, ...]`` (replicates every network has)."""
  replicates = int(replicas.counts.min())
  return np.stack([statistic(dataclasses.replace(replicas.table, losses=replicas.samples[:, r]))
                   for r in range(replicates)])


def t_intervals(values: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
  """Elementwise 95% Student-t intervals of the mean over the first axis (replicates); None for one."""
  if values.shape[0] < 2:
    return None
  half = stats.t.ppf(0.5 + CONFIDENCE / 2, values.shape[0] - 1) * values.std(axis=0, ddof=1) / np.sqrt(values.shape[0])
  centre = values.mean(axis=0)
  return centre - half, centre + half
