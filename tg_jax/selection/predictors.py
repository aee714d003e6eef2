"""Grouping predictors: losses of task groups that were never trained, each with the training it needed.

Every predictor has one shape: ``predict(name, measured, ...) -> Prediction``. It reads what was
measured (``Measured``: converged validation losses of the networks trained so far and, for TAG,
the affinities of one all-task run) and returns the table the selector chooses from (the trained
networks it used, as measured, and one predicted row per untrained group), the training it needed
(``Compute``) and, where it can be measured, how far its predictions are from measured losses.

- ``hoa``: the Higher Order Approximation (``hoa.py``; paper section 3.3.2), from the singles and pairs.
- ``surrogate``: a ridge regression fitted on whatever groups were trained (singles, pairs and a
  share of the larger groups, ``sample``), on task membership and pairwise terms, as MTG-Net's and Grad-TAE's surrogates
  do; its regularisation is chosen by leave-one-out error.
- ``tag``: TAG's lookahead inter-task affinity (Fifty et al. 2021; ``tag.py``), from one all-task run.
- ``tag_cosine``: the same selection on the mean cosine similarity of the tasks' gradients of the
  shared parameters (the paper's "CS" baseline; google-research/tag's network selection takes either
  matrix). Needs ``"cosine"`` in ``results/tag.json``.

Compute is counted in trainings: one network trained for its whole schedule (any size), so that it
is defined on tables alone; ``Compute.network_steps`` converts with the schedule's length.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from tg_jax.selection import hoa
from tg_jax.selection import tag as tag_selection
from tg_jax.selection.tables import ResultsTable, TableError, has_size, network_key

FULL_COST = 1.0
HALF_COST = 0.5
# The surrogate's regularisation strengths tried (on losses divided by each task's mean loss).
RIDGE_STRENGTHS = tuple(float(s) for s in np.logspace(-4, 3, 15))
# Leave-one-out residuals of rows the rest of the data cannot predict at all (leverage 1) are undefined.
_LEVERAGE_LIMIT = 1.0 - 1e-6


@dataclasses.dataclass(frozen=True)
class Affinities:
  """TAG's measurements on one all-task network (``results/tag.json``).

  Attributes:
    tasks: the tasks, in the matrices' order.
    lookahead: ``[source, target]`` mean lookahead affinity Z(source -> target).
    cosine: ``[tasks, tasks]`` mean cosine similarity of the tasks' shared-parameter gradients, when
      the run recorded it.
    training_steps: steps the measured network trained (one training).
    lookahead_network_steps: the lookahead passes, in training-step equivalents.
    cosine_network_steps: the per-task gradients behind the cosines, in training-step equivalents.
  """

  tasks: tuple[str, ...]
  lookahead: np.ndarray
  cosine: Optional[np.ndarray] = None
  training_steps: float = 0.0
  lookahead_network_steps: float = 0.0
  cosine_network_steps: float = 0.0

  @classmethod
  def from_json(cls, value: Mapping[str, Any]) -> "Affinities":
    """From ``results/tag.json``'s content (``tg_jax.affinity.meter.TagMeter.summary``)."""
    cosine = value.get("cosine")
    return cls(tuple(value["tasks"]), np.asarray(value["affinity"], dtype=np.float64),
               None if cosine is None else np.asarray(cosine, dtype=np.float64),
               float(value.get("network_steps", 0)), float(value.get("lookahead_network_steps", 0)),
               float(value.get("cosine_network_steps", 0)))


@dataclasses.dataclass(frozen=True)
class Measured:
  """What a predictor may read: ``trained``, the converged validation losses of the networks trained
  so far, and ``affinities`` (TAG), when measured."""

  trained: ResultsTable
  affinities: Optional[Affinities] = None


@dataclasses.dataclass(frozen=True)
class Compute:
  """Training a prediction needed, in trainings (one network trained for its whole schedule, any size).

  Attributes:
    trainings: how many.
    snt_trainings: the same, each weighted by its network's cost in SNT.
    counted: what they are, in words.
    trained: keys (``tables.network_key``) of the networks trained to convergence for it; networks the
      selection then chooses among these need no further training.
  """

  trainings: float
  snt_trainings: float
  counted: str
  trained: frozenset = dataclasses.field(default=frozenset(), repr=False)

  def network_steps(self, steps_per_training: float) -> float:
    return self.trainings * steps_per_training


@dataclasses.dataclass(frozen=True)
class PredictionError:
  """How far predicted losses are from measured ones, over (network, task) pairs (HOA's measures).

  Attributes:
    max_ratio_error: mean of max(predicted/actual, actual/predicted) - 1.
    overestimate: mean of actual/predicted - 1 (positive: the predictions are optimistic).
    count: (network, task) losses compared.
    kind: ``"held-out"``: measured networks the predictor did not use; ``"leave-one-out"``: each
      trained group predicted from the others (the surrogate's fit).
  """

  max_ratio_error: float
  overestimate: float
  count: int
  kind: str

  @classmethod
  def between(cls, predicted: np.ndarray, actual: np.ndarray, kind: str) -> Optional["PredictionError"]:
    predicted, actual = np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if not actual.size:
      return None
    ratio = predicted / actual
    return cls(max_ratio_error=float(np.mean(np.maximum(ratio, 1 / ratio) - 1)),
               overestimate=float(np.mean(1 / ratio - 1)), count=int(actual.size), kind=kind)

  def describe(self) -> str:
    return (f"{self.kind} error over {self.count} losses: average max-ratio error {100 * self.max_ratio_error:.1f}%, "
            f"average overestimate {100 * self.overestimate:.1f}%")


@dataclasses.dataclass(frozen=True)
class Prediction:
  """A predictor's answer.

  Attributes:
    name: the predictor.
    table: what the selector chooses from: the trained networks the predictor used, as measured, and
      one row per predicted group (cost 1 SNT). TAG's rows hold minus its scores, not losses.
    predicted: ``[rows]`` whether each row is a prediction.
    compute: the training it needed.
    error: against measured networks it did not use (held-out), else its own fit's (leave-one-out);
      None where neither exists or its values are not losses (TAG).
    generated: HOA's groups are too many to list: ``table`` holds the measured networks alone and
      the selection generates groups on demand (``columns.select_many``), adding those it priced.
  """

  name: str
  table: ResultsTable
  predicted: np.ndarray
  compute: Compute
  error: Optional[PredictionError] = None
  generated: bool = False

  @property
  def num_predicted(self) -> int:
    return int(np.sum(self.predicted))


def check_size(num_tasks: int, max_group_size: Optional[int] = None, name: str = "") -> None:
  """Raises, before anything is listed, when predictor ``name`` would list too many groups
  (``hoa.check_size``). HOA never does: past that many it generates its groups on demand."""
  if name != "hoa":
    hoa.check_size(num_tasks, max_group_size)


def lists_groups(num_tasks: int, max_group_size: Optional[int] = None) -> bool:
  """Whether HOA's groups of 3 to ``max_group_size`` tasks are few enough to list as table rows."""
  max_group_size = num_tasks if max_group_size is None else max_group_size
  return hoa.predicted_group_count(num_tasks, max_group_size) <= hoa.MAX_PREDICTED_GROUPS


def _full_size_rows(table: ResultsTable, keep=lambda tasks: True) -> list[int]:
  return [r for r, tasks in enumerate(table.network_tasks) if has_size(table.costs[r], FULL_COST) and keep(tasks)]


def _held_out_error(trained: ResultsTable, table: ResultsTable, predicted: np.ndarray) -> Optional[PredictionError]:
  """Predicted rows of ``table`` against the same networks measured in ``trained``."""
  measured = {trained.network_key(r): r for r in range(trained.num_networks)}
  pairs = [(row, measured[table.network_key(row)]) for row in np.flatnonzero(predicted)
           if table.network_key(row) in measured]
  if not pairs:
    return None
  rows, actual_rows = map(list, zip(*pairs))
  solved = np.isfinite(trained.losses[actual_rows])
  return PredictionError.between(table.losses[rows][solved], trained.losses[actual_rows][solved], "held-out")


def _hoa(measured: Measured, max_group_size: Optional[int]) -> Prediction:
  trained = measured.trained
  generated = not lists_groups(trained.num_tasks, max_group_size)
  if generated:
    hoa.pair_losses(trained)  # every pair is needed; says which are missing
    table = trained.subset([r for r, tasks in enumerate(trained.network_tasks) if len(tasks) <= 2])
  else:
    table = hoa.predict(trained, max_group_size)
  predicted = np.array([len(tasks) >= 3 for tasks in table.network_tasks])
  used = [r for r in range(table.num_networks) if not predicted[r]]
  count = len(used)
  compute = Compute(float(count), float(table.costs[used].sum()), f"{count} singles, half-size singles and pairs",
                    frozenset(table.network_key(r) for r in used))
  return Prediction("hoa", table, predicted, compute, None if generated else _held_out_error(trained, table, predicted),
                    generated=generated)


# --- The surrogate --------------------------------------------------------------------------------

def _features(membership: np.ndarray, target: int) -> np.ndarray:
  """``[groups, 1 + others + other pairs]`` regressors of ``target``'s loss in each group (all contain it).

  Intercept; for every other task u, its share of the group's other members (1/(n-1) if in the group:
  with singles and pairs alone the fit is HOA's mean of pair losses); for every pair of other tasks,
  its share of the pairs among the other members (what HOA cannot express)."""
  others = [u for u in range(membership.shape[1]) if u != target]
  member = membership[:, others].astype(np.float64)                             # [groups, others]
  count = member.sum(axis=1, keepdims=True)
  share = np.divide(member, count, out=np.zeros_like(member), where=count > 0)
  pairs = list(itertools.combinations(range(len(others)), 2))
  both = (member[:, [a for a, _ in pairs]] * member[:, [b for _, b in pairs]]) if pairs else np.zeros((len(member), 0))
  pair_count = count * (count - 1) / 2
  pair_share = np.divide(both, pair_count, out=np.zeros_like(both), where=pair_count > 0)
  return np.concatenate([np.ones((len(member), 1)), share, pair_share], axis=1)


def _penalties(num_tasks: int, strength: float) -> np.ndarray:
  """The intercept and main effects are barely penalised (they are what HOA fits exactly); the
  pairwise terms get ``strength``."""
  others = num_tasks - 1
  return np.concatenate([np.zeros(1), np.full(others, 1e-9), np.full(others * (others - 1) // 2, strength)])


def _ridge(features: np.ndarray, targets: np.ndarray, penalties: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Coefficients and leave-one-out residuals (nan where a row's leverage is 1) of a ridge fit."""
  gram = features.T @ features + np.diag(penalties)
  inverse = np.linalg.pinv(gram, hermitian=True)
  coefficients = inverse @ features.T @ targets
  leverage = np.einsum("ij,jk,ik->i", features, inverse, features)
  residuals = targets - features @ coefficients
  with np.errstate(divide="ignore", invalid="ignore"):
    loo = np.where(leverage < _LEVERAGE_LIMIT, residuals / (1 - leverage), np.nan)
  return coefficients, loo


@dataclasses.dataclass(frozen=True)
class SurrogateFit:
  """The surrogate's fit: one ridge regression per task (its loss in the groups containing it),
  sharing one strength chosen by leave-one-out error on groups of 3+ tasks (with singles and pairs
  alone nothing tests the pairwise terms, and the largest strength is kept)."""

  coefficients: tuple[np.ndarray, ...]   # per task, [1 + others + other pairs]
  scales: np.ndarray                     # [tasks] each task's mean measured loss (the fit's unit)
  strength: float
  loo_error: Optional[PredictionError]

  def predict(self, membership: np.ndarray) -> np.ndarray:
    """``[groups, tasks]`` predicted losses of groups given as ``[groups, tasks]`` membership; inf
    where a task is not in the group. Never below 0 (a loss is not negative)."""
    losses = np.full(membership.shape, np.inf)
    for t, coefficients in enumerate(self.coefficients):
      rows = np.flatnonzero(membership[:, t])
      if rows.size:
        losses[rows, t] = np.maximum(_features(membership[rows], t) @ coefficients * self.scales[t], 0.0)
    return losses


def fit_surrogate(table: ResultsTable, rows: Sequence[int]) -> SurrogateFit:
  """Fits the surrogate on ``table``'s full-size networks ``rows``; every task needs one."""
  num_tasks = table.num_tasks
  membership = np.isfinite(table.losses[list(rows)])
  losses = table.losses[list(rows)]
  missing = [table.task_names[t] for t in range(num_tasks) if not membership[:, t].any()]
  if missing:
    raise TableError(f"the surrogate needs a trained full-size network on every task; none solves "
                     f"{', '.join(missing)} (train its single-task network)")
  per_task = []
  for t in range(num_tasks):
    contains = np.flatnonzero(membership[:, t])
    per_task.append((contains, _features(membership[contains], t), losses[contains, t]))
  scales = np.array([targets.mean() for _, _, targets in per_task])
  best = None
  for strength in RIDGE_STRENGTHS:
    fits, predicted, actual = [], [], []
    for t, (contains, features, targets) in enumerate(per_task):
      coefficients, loo = _ridge(features, targets / scales[t], _penalties(num_tasks, strength))
      fits.append(coefficients)
      scored = np.isfinite(loo) & (membership[contains].sum(axis=1) >= 3)
      predicted.append((targets[scored] / scales[t] - loo[scored]) * scales[t])
      actual.append(targets[scored])
    predicted, actual = np.concatenate(predicted), np.concatenate(actual)
    score = float(np.mean(((predicted - actual) / actual) ** 2)) if actual.size else 0.0
    # Ties (nothing to score) keep the strongest penalty: pairwise terms stay at zero.
    if best is None or score <= best[0]:
      error = PredictionError.between(np.maximum(predicted, 1e-12), actual, "leave-one-out")
      best = (score, SurrogateFit(tuple(fits), scales, strength, error))
  return best[1]


def _groups_up_to(num_tasks: int, max_group_size: int) -> np.ndarray:
  """``[groups, tasks]`` membership of every group of 2..``max_group_size`` tasks."""
  groups = list(hoa.groups_of_order(num_tasks, 2, max_group_size))
  membership = np.zeros((len(groups), num_tasks), dtype=bool)
  for i, group in enumerate(groups):
    membership[i, list(group)] = True
  return membership


def _surrogate(measured: Measured, max_group_size: Optional[int], sample: float = 1.0, seed: int = 0) -> Prediction:
  """Fitted on every trained single and pair and on ``sample``, a share of the trained networks of 3+
  tasks drawn with ``seed`` (the others count as not trained: a study's way of pricing fewer
  trainings). The half-size singles stay candidates as measured."""
  if not 0.0 <= sample <= 1.0:
    raise ValueError(f"the surrogate's sample is a share of the trained networks of 3+ tasks, in [0, 1]; got {sample}")
  trained = measured.trained
  num_tasks = trained.num_tasks
  max_group_size = num_tasks if max_group_size is None else max_group_size
  check_size(num_tasks, max_group_size)
  small = _full_size_rows(trained, lambda tasks: len(tasks) <= 2)
  half = [r for r, tasks in enumerate(trained.network_tasks) if len(tasks) == 1 and has_size(trained.costs[r], HALF_COST)]
  larger = _full_size_rows(trained, lambda tasks: len(tasks) >= 3)
  drawn = sorted(larger[i] for i in np.random.default_rng(seed).permutation(len(larger))[:round(sample * len(larger))])
  used = small + half + drawn
  fit = fit_surrogate(trained, small + drawn)
  kept = trained.subset(used)
  column = {name: t for t, name in enumerate(trained.task_names)}
  known = {frozenset(column[t] for t in tasks) for tasks, cost in zip(kept.network_tasks, kept.costs)
           if has_size(cost, FULL_COST)}
  membership = _groups_up_to(num_tasks, max_group_size)
  membership = membership[[frozenset(np.flatnonzero(m)) not in known for m in membership]]
  groups = tuple(tuple(trained.task_names[t] for t in np.flatnonzero(m)) for m in membership)
  table = kept
  if groups:  # none when every group was trained
    table = kept.concat(ResultsTable(trained.task_names, groups, np.full(len(groups), FULL_COST),
                                     fit.predict(membership)))
  predicted = np.arange(table.num_networks) >= kept.num_networks
  compute = Compute(float(len(used)), float(kept.costs.sum()), f"{len(small)} singles and pairs, {len(half)} half-size singles and "
                    f"{len(drawn)} of {len(larger)} groups of 3+ tasks", frozenset(kept.network_key(r) for r in range(kept.num_networks)))
  error = _held_out_error(trained, table, predicted) or fit.loo_error
  return Prediction("surrogate", table, predicted, compute, error)


# --- TAG ------------------------------------------------------------------------------------------

def _in_task_order(matrix: np.ndarray, source: Sequence[str], task_names: Sequence[str]) -> np.ndarray:
  if not set(task_names) <= set(source):
    raise TableError(f"TAG's affinities are for tasks {list(source)}, the tables' for {list(task_names)}; measure "
                     f"them on a network of the tables' tasks (config.tag.network)")
  order = [list(source).index(t) for t in task_names]
  return np.asarray(matrix)[np.ix_(order, order)]


def _tag_prediction(name: str, measured: Measured, matrix: np.ndarray, extra_steps: float, what: str,
                    max_group_size: Optional[int]) -> Prediction:
  affinities, trained = measured.affinities, measured.trained
  check_size(trained.num_tasks, max_group_size)
  scores = _in_task_order(matrix, affinities.tasks, trained.task_names)
  table = tag_selection.table(trained.task_names, scores, max_group_size=max_group_size)
  all_tasks = network_key(trained.task_names, FULL_COST)
  trainings = 1.0 + (extra_steps / affinities.training_steps if affinities.training_steps else 0.0)
  compute = Compute(trainings, trainings * FULL_COST, f"one all-task network while measuring {what}", frozenset({all_tasks}))
  return Prediction(name, table, np.ones(table.num_networks, dtype=bool), compute)


def _needs_affinities(name: str, measured: Measured) -> Affinities:
  if measured.affinities is None:
    raise TableError(f"--predict={name} needs TAG's affinities: results/tag.json of a run with config.tag.enabled "
                     f"(tg_jax.select: --affinities=WORKDIR/results/tag.json)")
  return measured.affinities


def _tag(measured: Measured, max_group_size: Optional[int]) -> Prediction:
  affinities = _needs_affinities("tag", measured)
  return _tag_prediction("tag", measured, affinities.lookahead, affinities.lookahead_network_steps,
                         "lookahead affinities", max_group_size)


def _tag_cosine(measured: Measured, max_group_size: Optional[int]) -> Prediction:
  affinities = _needs_affinities("tag_cosine", measured)
  if affinities.cosine is None:
    raise TableError("--predict=tag_cosine needs the gradients' cosine similarities (\"cosine\" in results/tag.json); "
                     "this run's tag.json has only the lookahead affinities: rerun with config.tag.enabled on a "
                     "version that records them")
  return _tag_prediction("tag_cosine", measured, affinities.cosine, affinities.cosine_network_steps,
                         "gradient cosine similarities", max_group_size)


_PREDICTORS = {"hoa": _hoa, "surrogate": _surrogate, "tag": _tag, "tag_cosine": _tag_cosine}
NAMES = tuple(_PREDICTORS)


def predict(name: str, measured: Measured, max_group_size: Optional[int] = None, **options) -> Prediction:
  """The prediction of predictor ``name`` (``NAMES``); ``options`` are the predictor's own
  (``surrogate``: ``sample``, ``seed``)."""
  if name not in _PREDICTORS:
    raise ValueError(f"unknown predictor {name!r}; choose one of {', '.join(NAMES)}")
  if options and name != "surrogate":
    raise ValueError(f"predictor {name!r} takes no options; got {', '.join(options)}")
  # Predictors model groups of served tasks; networks trained with a helper are not such groups.
  measured = dataclasses.replace(measured, trained=measured.trained.without_helper_networks())
  return _PREDICTORS[name](measured, max_group_size, **options)
