"""Selection for a list of budgets, scored on test and set against the baselines.

``run`` is what ``python -m tg_jax.select`` and ``tg_jax.finish`` call; its result is a
``Selection`` (per budget a ``Solution``, and the baselines' ``BaselineEntry``s), serialised by
``to_json`` only when written; ``format_text`` is its human-readable form.

Tables in play:
- ``val``: validation losses of trained networks (what selection uses when nothing is predicted);
- ``predict="<predictor>"``: selection runs on a predictor's table (``predictors.NAMES``: HOA from
  ``val``'s pairs, the surrogate fitted on ``val``'s networks, TAG and its cosine variant from
  ``affinities``): the networks it used as measured, and its predictions for untrained groups;
- ``converged``: validation losses of fully trained networks, used to assign each task to a chosen
  network when the selection table holds predictions (ESA tables, predictors); defaults to ``val``;
- ``test``: test losses of the same networks as ``converged``; each solution's test total sums the
  test losses of the networks serving each task.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from tg_jax.selection import baselines, columns, predictors, selector, uncertainty
from tg_jax.selection.tables import Replicas, ResultsTable, TableError, network_key

PREDICTIONS = ("none",) + predictors.NAMES


@dataclasses.dataclass(frozen=True)
class ChosenNetwork:
  """A network of a solution: its tasks, its cost (SNT) and whether it has converged results (a
  network chosen from predictions may not have been trained yet)."""

  tasks: tuple[str, ...]
  cost: float
  converged: bool = True

  @property
  def label(self) -> str:
    return f"{'+'.join(self.tasks)} @ {self.cost:g} SNT"

  @property
  def key(self) -> tuple[frozenset, float]:
    return network_key(self.tasks, self.cost)

  def to_json(self) -> dict[str, Any]:
    return {"tasks": list(self.tasks), "cost": self.cost, "converged": self.converged}


@dataclasses.dataclass(frozen=True)
class Solution:
  """The networks chosen at one budget, which task each serves, and their totals.

  Attributes:
    budget: the inference budget (SNT).
    networks: the chosen networks; each serves at least one task.
    assignment: ``{task: index into networks}`` of the network serving it.
    val_loss, test_loss: totals over tasks (None: not scored, e.g. networks not trained yet).
    cost: the networks' total cost.
    objective: the selector's objective value (weights, normalisers) on the selection table.
    predicted_val_loss: the selection table's total when it holds predictions (HOA, ESA, TAG).
    unused: networks chosen on predictions that serve no task once trained, left out.
    infeasible: why no set of networks within the budget serves every task (then no networks).
    gap: the selector's relative optimality gap on the selection table (0: proven optimal).
    method: how the selector found it (``selector.BRANCH_AND_BOUND``, ...).
  """

  budget: float
  networks: tuple[ChosenNetwork, ...] = ()
  assignment: Mapping[str, int] = dataclasses.field(default_factory=dict)
  val_loss: Optional[float] = None
  test_loss: Optional[float] = None
  cost: float = 0.0
  objective: Optional[float] = None
  predicted_val_loss: Optional[float] = None
  unused: tuple[str, ...] = ()
  infeasible: Optional[str] = None
  uncertainty: Optional[uncertainty.Uncertainty] = None
  gap: Optional[float] = None
  method: Optional[str] = None

  @property
  def untrained(self) -> tuple[str, ...]:
    """Labels of the chosen networks without converged results."""
    return tuple(n.label for n in self.networks if not n.converged)

  def served_by(self, index: int) -> list[str]:
    """The tasks network ``index`` serves."""
    return [task for task, i in self.assignment.items() if i == index]

  def to_json(self) -> dict[str, Any]:
    value = {"budget": self.budget, "networks": [n.to_json() for n in self.networks],
             "assignment": dict(self.assignment), "val_loss": self.val_loss, "test_loss": self.test_loss,
             "cost": self.cost, "objective": self.objective, "predicted_val_loss": self.predicted_val_loss,
             "untrained": list(self.untrained), "unused": list(self.unused), "gap": self.gap, "method": self.method}
    if self.infeasible is not None:
      value["infeasible"] = self.infeasible
    if self.uncertainty is not None:
      value.update(self.uncertainty.to_json())
    return value


@dataclasses.dataclass(frozen=True)
class BaselineEntry:
  """A baseline at one budget: its networks and totals; Random's are means over ``samples`` fills
  (with their standard errors), Pessimal says whether its search was ``exact``."""

  budget: float
  val_loss: Optional[float]
  test_loss: Optional[float]
  networks: tuple[ChosenNetwork, ...] = ()
  cost: Optional[float] = None
  samples: Optional[int] = None
  exact: Optional[bool] = None
  val_loss_stderr: Optional[float] = None
  test_loss_stderr: Optional[float] = None

  def to_json(self) -> dict[str, Any]:
    value = {"budget": self.budget, "val_loss": self.val_loss, "test_loss": self.test_loss}
    if self.networks:
      value["networks"] = [n.to_json() for n in self.networks]
    value.update({k: v for k, v in (("cost", self.cost), ("samples", self.samples), ("exact", self.exact),
                                    ("val_loss_stderr", self.val_loss_stderr),
                                    ("test_loss_stderr", self.test_loss_stderr)) if v is not None})
    return value


# Baseline name (all_task, independent, random, pessimal) -> its entry per budget (None: no answer).
Baselines = Mapping[str, Sequence[Optional[BaselineEntry]]]


@dataclasses.dataclass(frozen=True)
class Selection:
  """One method's selection at every budget.

  Attributes:
    tasks: the tasks, in table order.
    predict: what the selection table held (``"none"``: losses as trained, else the predictor's name).
    budgets: the budgets, one solution each.
    solutions: per budget.
    baselines: the baselines at the same budgets, where computed.
    prediction_error: the predictor's error against measured losses it did not use (held-out), else
      its own fit's (leave-one-out); None where neither exists.
    prediction_compute: the training the predictor needed (before its chosen networks are trained).
    method: the name a study gives this selection (``optimal``, ``hoa``, ``esa``, ``tag``, ...).
  """

  tasks: tuple[str, ...]
  predict: str
  budgets: tuple[float, ...]
  solutions: tuple[Solution, ...]
  baselines: Optional[Baselines] = None
  prediction_error: Optional[predictors.PredictionError] = None
  prediction_compute: Optional[predictors.Compute] = None
  method: str = ""

  def to_json(self) -> dict[str, Any]:
    value = {"tasks": list(self.tasks), "predict": self.predict, "budgets": list(self.budgets),
             "solutions": [s.to_json() for s in self.solutions]}
    if self.method:
      value["method"] = self.method
    if self.baselines is not None:
      value["baselines"] = {name: [None if e is None else e.to_json() for e in entries]
                            for name, entries in self.baselines.items()}
    if self.predict != "none":
      value["prediction_error"] = None if self.prediction_error is None else dataclasses.asdict(self.prediction_error)
      compute = self.prediction_compute
      value["prediction_compute"] = None if compute is None else {"trainings": compute.trainings,
                                                                 "counted": compute.counted}
    return value


def default_budgets(table: ResultsTable) -> list[float]:
  """1 to the number of tasks in steps of 0.5 SNT, as in the paper."""
  return [float(b) for b in np.arange(1.0, table.num_tasks + 0.25, 0.5)]


def _rows_by_key(table: Optional[ResultsTable]) -> dict:
  if table is None:
    return {}
  return {table.network_key(row): row for row in range(table.num_networks)}


def _chosen(table: ResultsTable, rows: Sequence[int], converged_rows: Mapping) -> tuple[ChosenNetwork, ...]:
  return tuple(ChosenNetwork(tuple(table.network_tasks[r]), float(table.costs[r]), table.network_key(r) in converged_rows)
               for r in rows)


def _baseline_entry(table: ResultsTable, scored: Optional[baselines.Scored], budget: float) -> Optional[BaselineEntry]:
  if scored is None:
    return None
  return BaselineEntry(budget, scored.val_loss, scored.test_loss, _chosen(table, scored.networks, _rows_by_key(table)),
                       scored.cost)


def run(val: ResultsTable, test: Optional[ResultsTable] = None, predict: str = "none",
        budgets: Optional[Sequence[float]] = None, objective: Optional[selector.Objective] = None,
        converged: Optional[ResultsTable] = None, random_samples: int = 1000, seed: int = 0,
        with_baselines: bool = True, replicas: Optional[tuple[Replicas, Replicas]] = None,
        bootstrap: int = uncertainty.DEFAULT_RESAMPLES, risk_quantile: Optional[float] = None,
        examples: Optional[uncertainty.Examples] = None, max_group_size: Optional[int] = None,
        affinities: Optional[predictors.Affinities] = None, predictor_options: Optional[Mapping[str, Any]] = None,
        progress: Optional[Callable[[str], None]] = None) -> Selection:
  """Selects networks for every budget and scores them and the baselines.

  A budget within which no set of networks serves every task gets a solution with no networks and
  an ``infeasible`` message naming the cheapest set that would. ``with_baselines=False`` leaves the
  baselines out (a study comparing several methods on one set of networks computes them once,
  with ``baselines_for``).

  ``replicas``: every seed replica of the converged networks, ``(validation, test)``, whose means
  are ``converged`` and ``test``. Each solution then carries its ``uncertainty`` from ``bootstrap``
  resamples (``tg_jax.selection.uncertainty``), which also redraw the evaluation examples when
  ``examples`` (per-example losses of the replicas, in their order) are given. ``risk_quantile``
  selects on each network's upper quantile over its replicas instead of its mean
  (``uncertainty.risk_table``; needs ``replicas``). ``max_group_size``: the predictor's largest
  predicted group (default: all tasks). ``affinities``: TAG's measurements (``predict="tag"`` and
  ``"tag_cosine"``); ``predictor_options``: the predictor's own (``predictors.predict``). ``progress``
  is called with a line as each stage finishes.
  """
  if risk_quantile is not None and replicas is None:
    raise ValueError("selecting by a risk quantile needs seed replicas (a results table with a seed column)")
  if replicas is not None and converged is None:
    converged = replicas[0].table
  risk_offsets = np.zeros_like(val.losses)
  if risk_quantile is not None:
    offsets = uncertainty.risk_table(replicas[0], risk_quantile).losses - replicas[0].table.losses
    replica_rows = _rows_by_key(replicas[0].table)
    risk_offsets = offsets[[replica_rows[val.network_key(r)] for r in range(val.num_networks)]]
    val = dataclasses.replace(val, losses=val.losses + risk_offsets)
  if predict not in PREDICTIONS:
    raise ValueError(f"unknown prediction {predict!r}; choose one of {', '.join(PREDICTIONS)}")
  if predict != "none":
    predictors.check_size(val.num_tasks, max_group_size, predict)
  converged = val if converged is None else converged
  converged = converged.with_task_order(val.task_names, "converged table")
  if test is not None:
    test = test.aligned_to(converged)
  budgets = default_budgets(val) if budgets is None else [float(b) for b in budgets]
  prediction = None
  if predict != "none":
    prediction = predictors.predict(predict, predictors.Measured(val, affinities), max_group_size,
                                    **(predictor_options or {}))
  table = val if prediction is None else prediction.table
  converged_rows = _rows_by_key(converged)
  tasks = np.arange(val.num_tasks)
  generated = prediction is not None and prediction.generated
  if generated and replicas is not None and bootstrap:
    raise ValueError(f"intervals re-run the selection per bootstrap resample, which {val.num_tasks} tasks' generated "
                     f"HOA groups make too slow; select without them (--bootstrap=0)")
  if progress is not None:
    how = columns.COLUMN_GENERATION if generated else selector.method_for(table.num_tasks)
    progress(f"selecting among {table.num_networks} networks{' and generated groups' if generated else ''} for "
             f"{len(budgets)} budget(s) by {how}")
  if generated:
    table, chosen = columns.select_many(table, budgets, objective, max_group_size, infeasible="explain",
                                        progress=progress)
    prediction = dataclasses.replace(prediction, table=table, predicted=np.array(
        [len(t) >= 3 for t in table.network_tasks]))
  else:
    chosen = selector.select_many(table, budgets, objective, infeasible="explain", progress=progress)

  solutions = []
  for budget, solution in zip(budgets, chosen):
    if isinstance(solution, selector.NoFeasibleSolution):
      solutions.append(Solution(budget, infeasible=str(solution)))
      continue
    keys = [table.network_key(r) for r in solution.networks]
    measured = all(key in converged_rows for key in keys)
    unused = ()
    if measured:
      # The chosen networks exist fully trained: serve each task by its best one on validation. A
      # network that then serves no task is not run at inference: it leaves the solution.
      chosen = [converged_rows[key] for key in keys]
      assignment = selector.assign(converged.losses, chosen)
      ordered = [row for row in chosen if row in set(assignment)]
      unused = tuple(converged.network_label(row) for row in chosen if row not in set(assignment))
      val_loss = float(np.sum(converged.losses[list(assignment), tasks]))
    else:
      ordered = list(solution.networks)
      assignment = solution.assignment
      val_loss = solution.loss
    index_of = {row: i for i, row in enumerate(ordered)}
    source = converged if measured else table
    test_loss = None
    if test is not None and measured:
      test_loss = float(np.sum(test.losses[list(assignment), tasks]))
    solutions.append(Solution(
        budget=solution.budget, networks=_chosen(source, ordered, converged_rows),
        assignment={task: index_of[row] for task, row in zip(val.task_names, assignment)},
        val_loss=val_loss, test_loss=test_loss, cost=float(sum(source.costs[r] for r in ordered)),
        objective=solution.objective, predicted_val_loss=solution.loss if table is not converged else None,
        unused=unused, gap=solution.gap, method=solution.method))

  if replicas is not None and bootstrap:
    def predicted_table(losses: ResultsTable) -> ResultsTable:
      return predictors.predict(predict, predictors.Measured(losses, affinities), max_group_size,
                                **(predictor_options or {})).table

    solutions = _with_uncertainty(solutions, val, converged, replicas, predicted_table if prediction else None,
                                  budgets, objective, risk_offsets, random_samples, bootstrap, seed, examples)
  if progress is not None and with_baselines:
    progress("scoring the baselines (all-task, independent, Random, Pessimal)")
  return Selection(
      tasks=tuple(val.task_names), predict=predict, budgets=tuple(budgets), solutions=tuple(solutions),
      baselines=baselines_for(converged, test, budgets, random_samples, seed, objective=objective)
      if with_baselines else None,
      prediction_error=None if prediction is None else prediction.error,
      prediction_compute=None if prediction is None else prediction.compute)


def _chooser(val: ResultsTable, replica_rows: Mapping, predicted_table: Optional[Callable[[ResultsTable], ResultsTable]],
             objective: Optional[selector.Objective], risk_offsets) -> Callable:
  """``run``'s selection on ``val``'s networks as a function of resampled validation means of the
  replicas (rows ``replica_rows``), for ``uncertainty.assess`` and ``uncertainty.choice_frequencies``."""
  candidates = [replica_rows[val.network_key(r)] for r in range(val.num_networks)]

  def choose(means: np.ndarray, budgets: Sequence[float]) -> list[list[Optional[uncertainty.Grouping]]]:
    """The selection of ``run`` on resampled validation means ``[resamples, replica rows, tasks]``."""
    if predicted_table is not None:
      predicted = [predicted_table(dataclasses.replace(val, losses=m[candidates])) for m in means]
      table, losses = predicted[0], np.stack([t.losses for t in predicted])
    else:
      table, losses = val, means[:, candidates] + risk_offsets
    scores = (objective or selector.Objective()).scores(table, losses)
    try:
      rows = uncertainty.BatchSelector(table.network_tasks, table.costs, table.task_names).select(scores, budgets)
    except uncertainty.TooManyStructures:
      rows = [[None if isinstance(s, selector.NoFeasibleSolution) else s.networks
               for s in selector.select_many(dataclasses.replace(table, losses=l), budgets, objective,
                                             infeasible="explain")] for l in losses]
    chosen = []
    for resample, per_budget in zip(means, rows):
      chosen.append([])
      for picked in per_budget:
        keys = [] if picked is None else [table.network_key(r) for r in picked]
        if not keys or not all(key in replica_rows for key in keys):
          chosen[-1].append(None)  # infeasible, or a predicted network that was never trained
          continue
        assignment = selector.assign(resample, [replica_rows[key] for key in keys])
        chosen[-1].append(tuple(sorted(set(assignment))))
    return chosen

  return choose


def _with_uncertainty(solutions: Sequence[Solution], val: ResultsTable, converged: ResultsTable,
                      replicas: tuple[Replicas, Replicas],
                      predicted_table: Optional[Callable[[ResultsTable], ResultsTable]], budgets: Sequence[float],
                      objective: Optional[selector.Objective], risk_offsets, random_samples: int, resamples: int,
                      seed: int, examples: Optional[uncertainty.Examples]) -> list[Solution]:
  """``solutions`` with their uncertainty: the same selection (on ``predicted_table`` of the
  measured losses, when it selects on predictions) re-run on bootstrap resamples of the replicas, and
  paired differences against the all-task, independent and Random baselines."""
  val_replicas, test_replicas = replicas
  replica_rows = _rows_by_key(val_replicas.table)
  if set(_rows_by_key(converged)) != set(replica_rows):
    raise TableError("the replicas must hold exactly the converged table's networks")
  test_replicas = test_replicas.aligned_to(val_replicas)
  # The selection table's networks as rows of the replicas (the selector's candidates).
  candidates = [replica_rows[val.network_key(r)] for r in range(val.num_networks)]

  choose = _chooser(val, replica_rows, predicted_table, objective, risk_offsets)
  groupings = [None if s.infeasible or s.untrained else tuple(sorted(replica_rows[n.key] for n in s.networks))
               for s in solutions]
  compared = []
  serves = _serves(val_replicas.table, objective)
  for budget in budgets:
    entries = []
    for name, scored in (("all_task", baselines.all_task_network(val_replicas.table, None, budget, serves)),
                         ("independent", baselines.independent_networks(val_replicas.table, None, budget, serves))):
      if scored is not None:
        entries.append(uncertainty.Baseline(name, (scored.networks,)))
    fills, _ = baselines.random_fills(val_replicas.table.subset(candidates), budget, random_samples, seed,
                                      serves=serves[candidates])
    if fills:
      entries.append(uncertainty.Baseline("random", tuple(tuple(candidates[r] for r in f) for f in fills)))
    compared.append(entries)
  assessed = uncertainty.assess(val_replicas, test_replicas, budgets, groupings, choose, compared, resamples, seed,
                                examples)
  return [s if a is None else dataclasses.replace(s, uncertainty=a) for s, a in zip(solutions, assessed)]


def probability_optimal(candidates: ResultsTable, replicas: tuple[Replicas, Replicas], budgets: Sequence[float],
                        solutions: Mapping[str, Sequence[Solution]], resamples: int = uncertainty.DEFAULT_RESAMPLES,
                        seed: int = 0, examples: Optional[uncertainty.Examples] = None,
                        objective: Optional[selector.Objective] = None) -> dict[str, list[Optional[float]]]:
  """Per method and budget, the probability that the method's grouping is the optimum: the share of
  bootstrap resamples of the replicas in which the exact selection among ``candidates`` (all
  converged) chooses it. ``solutions``: ``{method: per budget}``; None where a method has no
  grouping (infeasible, or networks without seed replicas). With the same ``resamples``, ``seed``
  and ``examples``, Optimal's entry equals its ``Uncertainty.probability_optimal``: the resamples
  are the same."""
  val_replicas, test_replicas = replicas
  replica_rows = _rows_by_key(val_replicas.table)
  missing = [candidates.network_label(r) for r in range(candidates.num_networks)
             if candidates.network_key(r) not in replica_rows]
  if missing:
    raise TableError(f"the probability of being optimal needs seed replicas of every candidate; none of "
                     f"{', '.join(missing)}")
  choose = _chooser(candidates, replica_rows, None, objective, 0.0)
  counts = uncertainty.choice_frequencies(val_replicas, test_replicas.aligned_to(val_replicas), budgets, choose,
                                          resamples, seed, examples)
  result = {}
  for method, per_budget in solutions.items():
    result[method] = []
    for count, solution in zip(counts, per_budget):
      keys = [n.key for n in solution.networks]
      known = not solution.infeasible and keys and all(key in replica_rows for key in keys)
      result[method].append(count[tuple(sorted(replica_rows[k] for k in keys))] / resamples if known else None)
  return result


def _serves(table: ResultsTable, objective: Optional[selector.Objective]) -> np.ndarray:
  """``[networks, tasks]`` which network may serve which task under the objective's caps."""
  return np.isfinite((objective or selector.Objective()).scores(table))


def baselines_for(val: ResultsTable, test: Optional[ResultsTable], budgets: Sequence[float], random_samples: int,
                  seed: int, baseline_tables: Optional[tuple[ResultsTable, Optional[ResultsTable]]] = None,
                  objective: Optional[selector.Objective] = None) -> Baselines:
  """The baselines of paper section 4.3 at each budget, drawn from ``val``'s networks; the
  ``objective``'s caps bind them as they bind the selection (a network serves a task only within its cap).

  ``baseline_tables``: ``(val, test)`` tables the all-task and independent baselines draw from
  instead, when they hold networks that are not selection candidates: single-task networks of the
  paper's 1/5 to 4/5 SNT, all-task networks wider than one standard network.
  """
  fixed_val, fixed_test = (val, test) if baseline_tables is None else baseline_tables
  serves, fixed_serves = _serves(val, objective), _serves(fixed_val, objective)
  all_task, independent_entries, random, pessimal = [], [], [], []
  for budget in budgets:
    all_task.append(_baseline_entry(fixed_val, baselines.all_task_network(fixed_val, fixed_test, budget, fixed_serves),
                                    budget))
    independent_entries.append(_baseline_entry(fixed_val, baselines.independent_networks(
        fixed_val, fixed_test, budget, fixed_serves), budget))
    sampled = baselines.random_solutions(val, test, budget, samples=random_samples, seed=seed, serves=serves)
    random.append(BaselineEntry(budget, sampled.val_loss, sampled.test_loss, samples=sampled.samples,
                                val_loss_stderr=sampled.val_loss_stderr, test_loss_stderr=sampled.test_loss_stderr))
    worst = baselines.pessimal_solution(val, test, budget, serves)
    entry = _baseline_entry(val, worst.scored, budget)
    pessimal.append(None if entry is None else dataclasses.replace(entry, exact=worst.exact))
  return {"all_task": all_task, "independent": independent_entries, "random": random, "pessimal": pessimal}


def _number(value: Optional[float]) -> str:
  return "-" if value is None else f"{value:.4f}"


def _interval(interval: Optional[tuple[float, float]]) -> str:
  return "" if interval is None else f" [{interval[0]:.4f}, {interval[1]:.4f}]"


def _uncertainty_lines(assessed: uncertainty.Uncertainty) -> list[str]:
  if assessed.test_loss_interval is None:
    lines = ["one replica per network: no interval (train every network with 2+ seeds, config.networks.seeds)"]
  else:
    lines = [f"95% intervals over {assessed.replicates} seeds: val{_interval(assessed.val_loss_interval)}, "
             f"test{_interval(assessed.test_loss_interval)} (winner's-curse correction {assessed.optimism:+.4f})"]
  alternatives = ", ".join(f"{' & '.join(a.networks)} ({a.probability:.2f})" for a in assessed.alternatives)
  lines.append(f"probability optimal {assessed.probability_optimal:.2f}"
               + (f"; alternatives: {alternatives}" if alternatives else ""))
  if assessed.differences:
    lines.append("; ".join(d.describe() for d in assessed.differences))
  return lines


_PREDICTOR_NAMES = {"hoa": "HOA predictions", "surrogate": "the surrogate's predictions",
                    "tag": "TAG's affinities", "tag_cosine": "TAG's gradient cosine similarities"}


def format_text(result: Selection) -> str:
  """The per-budget report: chosen networks, which tasks each serves, totals, baselines."""
  lines = []
  predicted = "" if result.predict == "none" else f" (networks chosen from {_PREDICTOR_NAMES[result.predict]})"
  lines.append(f"Network selection for tasks {', '.join(result.tasks)}{predicted}")
  for solution in result.solutions:
    lines.append("")
    if solution.infeasible:
      lines.append(f"budget {solution.budget:g} SNT: infeasible: {solution.infeasible}")
      continue
    found = "" if solution.method is None else f" ({solution.method}, gap {100 * solution.gap:.2f}%)"
    lines.append(f"budget {solution.budget:g} SNT: {len(solution.networks)} network(s), cost "
                 f"{solution.cost:g}, val {_number(solution.val_loss)}, test {_number(solution.test_loss)}{found}")
    for index, network in enumerate(solution.networks):
      lines.append(f"  [{index}] {network.label}  serves {', '.join(solution.served_by(index))}")
    if solution.untrained:
      lines.append(f"  not trained yet (no test loss): {', '.join(solution.untrained)}")
    if solution.unused:
      lines.append(f"  chosen on predictions but left out, as it serves no task once trained: "
                   f"{', '.join(solution.unused)}")
    if solution.uncertainty is not None:
      lines += ["  " + line for line in _uncertainty_lines(solution.uncertainty)]
  lines.append("")
  lines.append("Total loss by budget (validation / test):")
  header = ["method"] + [f"{b:g}" for b in result.budgets]
  rows = [["selected"] + [f"{_number(s.val_loss)}/{_number(s.test_loss)}" for s in result.solutions]]
  for name, entries in (result.baselines or {}).items():
    rows.append([name] + [f"{_number(e.val_loss)}/{_number(e.test_loss)}" if e and e.val_loss is not None
                          else "-" for e in entries])
    if name == "random":
      rows.append(["  std. error"] + [f"{_number(e.val_loss_stderr)}/{_number(e.test_loss_stderr)}"
                                       if e and e.val_loss_stderr is not None else "-" for e in entries])
  widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
  for row in [header] + rows:
    lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
  if result.predict != "none":
    lines.append("")
    compute = result.prediction_compute
    lines.append(f"{_PREDICTOR_NAMES[result.predict]}: trained {compute.counted} ({compute.trainings:g} trainings)")
    error = result.prediction_error
    if error is not None:
      lines.append(f"  prediction {error.describe()}" + (" (paper, HOA: 5.2% and 1.4%)" if result.predict == "hoa" else ""))
  return "\n".join(lines)
