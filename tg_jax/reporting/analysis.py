"""The study's numbers, from results tables alone (numpy only).

- ``pair_relative_performance``: the paper's Table 1, each task's gain from being trained with each
  other task, against its half-size single-task network (the pair network spends half of one
  standard network on each task);
- ``pair_affinity``: Table 2, the mean of the two directions (``multitask_affinity_replicates``: per
  seed replica, for Figure 3's correlation with the transfer affinity, ``reporting.transfer``);
- ``compare_methods``: Table 4 / Figure 4, total test loss per method per budget, each method
  scored with the networks it chose (trained to convergence);
- ``untrained_choices``: the networks a predicting method (ESA, HOA, TAG) chose that have no
  converged results yet, which the paper's procedure trains before scoring;
- ``compute_per_method``: what each method costs to run, in trainings and network-steps;
- ``esa_correlation``: how well early losses predict final ones.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from tg_jax.selection import baselines as baselines_lib
from tg_jax.selection import hoa, predictors, refine, study, tables, uncertainty
from tg_jax.workdir import StudyTables
from tg_jax.selection.selector import COST_TOLERANCE
from tg_jax.selection.tables import ResultsTable, TableError

HALF_COST = 0.5
FULL_COST = 1.0
# Methods whose selection runs on predicted losses; their chosen networks are trained to
# convergence before they are scored.
PREDICTING_METHODS = ("esa",) + predictors.NAMES
# The share of the trained groups of 3+ tasks the study's surrogate is fitted on; it predicts the rest.
SURROGATE_SAMPLE = 0.25


def _single_task_losses(table: ResultsTable, size: float) -> np.ndarray:
  """``[tasks]``: each task's loss in its single-task network of ``size``; NaN where there is none."""
  losses = np.full(table.num_tasks, np.nan)
  for row, tasks in enumerate(table.network_tasks):
    if len(tasks) == 1 and tables.has_size(table.costs[row], size):
      j = table.task_names.index(tasks[0])
      losses[j] = table.losses[row, j]
  return losses


def pair_relative_performance(table: ResultsTable) -> np.ndarray:
  """``[tasks, tasks]``: entry (t, u) is 1 - loss of t in pair {t, u} / loss of t's half-size network.

  Positive: training with u helps t. The diagonal is NaN.
  """
  half = _single_task_losses(table, HALF_COST)
  missing = [t for t, loss in zip(table.task_names, half) if np.isnan(loss)]
  if missing:
    raise TableError(f"the help/hurt table needs a half-size ({HALF_COST:g} SNT) single-task network for every "
                     f"task; missing: {', '.join(missing)} (experiments/pairs.py trains them)")
  pair = hoa.pair_losses(table)
  relative = 1.0 - pair / half[:, None]
  np.fill_diagonal(relative, np.nan)
  return relative


def pair_affinity(relative: np.ndarray) -> np.ndarray:
  """Symmetric pairwise affinity: the mean of the two directions of ``pair_relative_performance``."""
  return (relative + relative.T) / 2


def multitask_affinity_replicates(test: ResultsTable, replicas: Optional[tables.Replicas] = None
                                  ) -> tuple[np.ndarray, tuple[int, ...]]:
  """Table 2 per replicate, ``[replicates, tasks, tasks]``, and the replicates' seeds: over seed
  replicas when every network has the same seeds (replicate r is every network's r-th seed), else
  ``test``'s means as one replicate (seeds ``()``)."""
  if replicas is not None and len(set(replicas.seeds)) == 1 and len(replicas.seeds[0]) >= 2:
    values = uncertainty.replicate_values(replicas, lambda table: pair_affinity(pair_relative_performance(table)))
    return values, tuple(replicas.seeds[0][:len(values)])
  return pair_affinity(pair_relative_performance(test))[None], ()


def pair_intervals(test: tables.Replicas) -> Optional[dict[str, tuple[np.ndarray, np.ndarray]]]:
  """95% intervals of Table 1 (``"relative"``) and Table 2 (``"affinity"``) over seed replicates, or
  None with fewer than two replicas of every pair and half-size network."""
  relative = uncertainty.replicate_values(test, pair_relative_performance)
  relative_intervals = uncertainty.t_intervals(relative)
  if relative_intervals is None:
    return None
  return {"relative": relative_intervals,
          "affinity": uncertainty.t_intervals(np.stack([pair_affinity(r) for r in relative]))}


# Figure 2's 1/k-SNT single-task networks: a narrow model cannot always build a small fraction within
# ``tables.SIZE_TOLERANCE`` (the CPU model's nearest encoder to 1/4 SNT measures 0.266), so each
# task's single-task network nearest 1/k counts when within this fraction of it; 3/10 SNT (0.301
# measured) still is not 1/3.
FRACTIONAL_SIZE_TOLERANCE = 0.075


def fractional_singles(table: ResultsTable, size: float) -> tuple[np.ndarray, np.ndarray]:
  """``([tasks] losses, [tasks] costs)`` of each task's single-task network whose cost is nearest
  ``size`` within ``FRACTIONAL_SIZE_TOLERANCE``; NaN where a task has none."""
  losses, costs = np.full(table.num_tasks, np.nan), np.full(table.num_tasks, np.nan)
  for row, tasks in enumerate(table.network_tasks):
    distance = abs(table.costs[row] - size)
    if len(tasks) != 1 or distance > FRACTIONAL_SIZE_TOLERANCE * size:
      continue
    j = table.task_names.index(tasks[0])
    if np.isnan(costs[j]) or distance < abs(costs[j] - size):
      losses[j], costs[j] = table.losses[row, j], table.costs[row]
  return losses, costs


def size_matched_groups(table: ResultsTable) -> list[tuple[str, ...]]:
  """Figure 2's groups: the full-size networks of ``k >= 2`` tasks each of whose tasks has a
  single-task network of ``1/k`` SNT in ``table`` (``fractional_singles``), ordered by ``k`` then
  by table row."""
  groups = []
  for row, tasks in enumerate(table.network_tasks):
    if len(tasks) < 2 or not tables.has_size(table.costs[row], FULL_COST) or table.helpers_of(row):
      continue
    singles, _ = fractional_singles(table, 1.0 / len(tasks))
    if all(np.isfinite(singles[table.task_names.index(t)]) for t in tasks):
      groups.append(tuple(tasks))
  return sorted(groups, key=len)


def size_matched_relative(table: ResultsTable, groups: Sequence[Sequence[str]]) -> np.ndarray:
  """``[groups]``: for each group of ``k`` tasks, the mean over its tasks of 1 - the task's loss in
  the group's full-size network / its loss in its own ``1/k``-SNT single-task network.

  Both sides spend one standard network in all (Figure 2 of the paper). Positive: sharing one
  network beats splitting it into ``k``.
  """
  full = {frozenset(tasks): row for row, tasks in enumerate(table.network_tasks)
          if tables.has_size(table.costs[row], FULL_COST)}
  values = np.empty(len(groups))
  for index, group in enumerate(groups):
    row = full.get(frozenset(group))
    singles, _ = fractional_singles(table, 1.0 / len(group))
    columns = [table.task_names.index(t) for t in group]
    if row is None or np.isnan(singles[columns]).any():
      raise TableError(f"Figure 2 needs the full-size network of {'+'.join(group)} and a {1 / len(group):.3g}-SNT "
                       f"single-task network of each of its tasks (experiments/study.py trains them)")
    values[index] = np.mean(1.0 - table.losses[row, columns] / singles[columns])
  return values


@dataclasses.dataclass(frozen=True)
class SizeMatched:
  """Figure 2 for the groups of one size ``k``: each group's network against ``k`` single-task
  networks of ``1/k`` SNT (``size_matched_relative``).

  Attributes:
    k: tasks per group.
    groups: the groups of ``k`` tasks with both sides trained.
    relative: ``[groups]`` each group's mean relative gain over its tasks.
    single_costs: the measured costs of the 1/k-SNT single-task networks compared (``fractional_singles``).
    group_intervals: with seed replicas, 95% intervals of ``relative`` over seeds (``[groups]`` lows, highs).
    mean_interval: with seed replicas, the 95% interval of the mean over groups.
  """

  k: int
  groups: tuple[tuple[str, ...], ...]
  relative: np.ndarray
  single_costs: tuple[float, ...]
  group_intervals: Optional[tuple[np.ndarray, np.ndarray]] = None
  mean_interval: Optional[tuple[float, float]] = None

  @property
  def mean(self) -> float:
    return float(np.mean(self.relative))


def size_matched(test: ResultsTable, replicas: Optional[tables.Replicas] = None) -> list[SizeMatched]:
  """Figure 2 per group size ``k`` (ascending; sizes without a 1/k-SNT single-task network of some
  group's tasks are left out), with intervals over the seeds of ``replicas`` (test) where every
  network involved has 2+ replicas."""
  groups = size_matched_groups(test)
  if not groups:
    return []
  relative = size_matched_relative(test, groups)
  per_replicate = None
  if replicas is not None:
    replicates = int(replicas.counts[_size_matched_rows(replicas.table, groups)].min())
    if replicates >= 2:
      # Networks Figure 2 does not read may have fewer replicas (NaN past their own): their means stand in.
      per_replicate = np.stack([size_matched_relative(dataclasses.replace(
          replicas.table, losses=np.where(np.isnan(replicas.samples[:, r]), replicas.table.losses,
                                          replicas.samples[:, r])), groups) for r in range(replicates)])
  result = []
  for k in sorted({len(g) for g in groups}):
    members = [i for i, g in enumerate(groups) if len(g) == k]
    group_intervals = mean_interval = None
    if per_replicate is not None:
      group_intervals = uncertainty.t_intervals(per_replicate[:, members])
      low, high = uncertainty.t_intervals(per_replicate[:, members].mean(axis=1))
      mean_interval = (float(low), float(high))
    members_tasks = {t for i in members for t in groups[i]}
    costs = fractional_singles(test, 1.0 / k)[1]
    single_costs = tuple(float(c) for t, c in zip(test.task_names, costs) if t in members_tasks)
    result.append(SizeMatched(k, tuple(groups[i] for i in members), relative[members], single_costs,
                              group_intervals, mean_interval))
  return result


def _size_matched_rows(table: ResultsTable, groups: Sequence[Sequence[str]]) -> list[int]:
  """The rows of ``table`` that ``size_matched_relative`` reads for ``groups``."""
  wanted = {frozenset(g) for g in groups}
  chosen = {(t, float(c)) for k in {len(g) for g in groups}
            for t, c in zip(table.task_names, fractional_singles(table, 1.0 / k)[1]) if np.isfinite(c)}
  return [row for row, tasks in enumerate(table.network_tasks)
          if (frozenset(tasks) in wanted and tables.has_size(table.costs[row], FULL_COST))
          or (len(tasks) == 1 and (tasks[0], float(table.costs[row])) in chosen)]


@dataclasses.dataclass(frozen=True)
class EsaCorrelation:
  """Pearson r between early (ESA) and final validation losses.

  ``pooled``: over every (network, task) loss, each divided by its task's full single-task network
  loss of the same table so that tasks on different scales are comparable; ``per_task``: raw losses,
  within each task.
  """

  pooled: float
  per_task: dict
  count: int


def common_networks(first: ResultsTable, second: ResultsTable) -> tuple[ResultsTable, ResultsTable]:
  """The rows of two tables (same tasks) that name the same networks, in ``first``'s order."""
  keys = {second.network_key(r): r for r in range(second.num_networks)}
  rows = [r for r in range(first.num_networks) if first.network_key(r) in keys]
  return first.subset(rows), second.subset([keys[first.network_key(r)] for r in rows])


def esa_correlation(final: ResultsTable, early: ResultsTable) -> EsaCorrelation:
  """Over the networks both tables hold (an ESA-only run retrains just the chosen ones)."""
  if early.task_names != final.task_names:
    raise TableError(f"the ESA table's tasks {list(early.task_names)} differ from the validation table's "
                     f"{list(final.task_names)}")
  final, early = common_networks(final, early)
  solved = final.solves
  final_single = _single_task_losses(final, FULL_COST)
  early_single = _single_task_losses(early, FULL_COST)
  final_relative = final.losses / final_single
  early_relative = early.losses / early_single
  usable = solved & np.isfinite(final_relative) & np.isfinite(early_relative)
  pooled = float(np.corrcoef(final_relative[usable], early_relative[usable])[0, 1]) if usable.sum() > 2 else np.nan
  per_task = {}
  for j, task in enumerate(final.task_names):
    rows = solved[:, j]
    if rows.sum() > 2:
      per_task[task] = float(np.corrcoef(final.losses[rows, j], early.losses[rows, j])[0, 1])
  return EsaCorrelation(pooled=pooled, per_task=per_task, count=int(usable.sum()))


def is_selection_candidate(tasks: Sequence[str], cost: float) -> bool:
  """Whether a network is one the selector may choose: a network of 2+ tasks up to one standard
  network, a full-size or a half-size single-task network (the paper's candidates). Single-task
  networks of other sizes (1/5 to 4/5 SNT) are trained only for the independent baseline and
  Figure 2, networks wider than one standard network (``config.networks.all_task_sizes``) only for
  the all-task baseline at larger budgets."""
  if cost > FULL_COST * (1 + tables.SIZE_TOLERANCE):
    return False
  if len(tasks) > 1:
    return True
  return tables.has_size(cost, FULL_COST) or tables.has_size(cost, HALF_COST)


def _candidate_rows(table: ResultsTable) -> list[int]:
  return [r for r in range(table.num_networks) if is_selection_candidate(table.network_tasks[r], table.costs[r])]


def selection_candidates(table: ResultsTable) -> ResultsTable:
  return table.subset(_candidate_rows(table))


def _not_yet_converged(run: study.Selection) -> study.Selection:
  """A selection made before any network was trained to convergence: every chosen network is
  untrained and nothing is scored on test."""
  solutions = tuple(dataclasses.replace(s, networks=tuple(dataclasses.replace(n, converged=False) for n in s.networks),
                                        val_loss=None, test_loss=None)
                    for s in run.solutions)
  return dataclasses.replace(run, solutions=solutions)


@dataclasses.dataclass
class Comparison:
  """Table 4: every method's selection and the baselines at the same budgets.

  Attributes:
    budgets: the budgets (SNT).
    methods: Table 4's rows, ``{name: [total test loss per budget, None where no answer]}``.
    runs: ``{method: Selection}`` of the selecting methods (optimal, selected, esa, and the predictors).
    baselines: ``study.baselines_for``'s entries, when every candidate converged.
    intervals: with seed replicas, the 95% interval of each row's total per budget.
    probability_optimal: with seed replicas, per selecting method and budget the probability that
      its grouping is the optimum among the converged candidates (``study.probability_optimal``).
    refinement: ESA's refinement rounds (``refinement``), when the study asks for them.
  """

  budgets: list[float]
  methods: dict[str, list[Optional[float]]]
  runs: dict[str, study.Selection]
  baselines: Optional[study.Baselines] = None
  intervals: dict[str, list[Optional[tuple[float, float]]]] = dataclasses.field(default_factory=dict)
  probability_optimal: dict[str, list[Optional[float]]] = dataclasses.field(default_factory=dict)
  refinement: Optional[refine.Refinement] = None


def _has_all_groups(table: ResultsTable) -> bool:
  plain = table.without_helper_networks()
  full_groups = {frozenset(t) for t, c in zip(plain.network_tasks, plain.costs) if tables.has_size(c, FULL_COST)}
  return len(full_groups) >= 2 ** table.num_tasks - 1


def _all_task_method_networks(methods: dict, task_names: Sequence[str]):
  """``(Table 4's row "<method> (all tasks)", cost, entry)`` of every ``methods.json`` network that
  serves every task."""
  for entry in methods.values():
    if set(entry["tasks"]) == set(task_names):
      yield f"{entry['method']} (all tasks)", round(float(entry["cost"]), 9), entry


def _method_network_totals(methods: dict, task_names: Sequence[str]) -> dict[str, dict[float, list[float]]]:
  """``{"<method> (all tasks)": {cost: [test total of each seed replica]}}`` of ``methods.json``'s
  networks that serve every task, one cost per size (``config.networks.all_task_sizes``)."""
  totals: dict[str, dict[float, list[float]]] = {}
  for row, cost, entry in _all_task_method_networks(methods, task_names):
    totals.setdefault(row, {}).setdefault(cost, []).append(float(sum(entry["test"][t] for t in task_names)))
  return totals


def _method_network_sizes(methods: dict, task_names: Sequence[str]) -> dict[tuple[str, float], float]:
  """``{("<method> (all tasks)", cost): the size it was built to}`` for ``_method_network_totals``'s
  networks (a soft-sharing network's size is per task, below its cost)."""
  return {(row, cost): float(entry["size"]) for row, cost, entry in _all_task_method_networks(methods, task_names)}


def _largest_fitting(by_cost: dict[float, list[float]], budget: float) -> Optional[list[float]]:
  """The replicas' totals of the costliest network that fits ``budget``, like the all-task baseline."""
  fitting = [cost for cost in by_cost if cost <= budget + COST_TOLERANCE]
  return by_cost[max(fitting)] if fitting else None


def _method_network_rows(methods: dict, task_names: Sequence[str], budgets: Sequence[float]) -> dict:
  """Table 4 rows of ``methods.json``'s networks that serve every task: per budget, the test total
  (mean over seed replicas) of the costliest one that fits."""
  rows = {}
  for name, by_cost in _method_network_totals(methods, task_names).items():
    replicas = [_largest_fitting(by_cost, b) for b in budgets]
    rows[name] = [None if r is None else float(np.mean(r)) for r in replicas]
  return rows


def _assigned_test_losses(solution: study.Solution, test: ResultsTable) -> dict:
  """``{task: test loss of the network serving it}`` for one solution."""
  rows = {test.network_key(r): r for r in range(test.num_networks)}
  losses = {}
  for task, index in solution.assignment.items():
    row = rows[solution.networks[index].key]
    losses[task] = float(test.losses[row, test.task_names.index(task)])
  return losses


def _ensemble_rows(ensemble: dict, runs: dict, test: ResultsTable, budgets: Sequence[float]) -> dict:
  """Table 4 row of the ensembled selection: each task that 2+ chosen networks solve takes the
  ensemble's test loss instead of its serving network's."""
  method = ensemble["method"]
  if method not in runs:
    return {}
  by_budget = {float(entry["budget"]): entry["tasks"] for entry in ensemble["budgets"]}
  totals = []
  for budget, solution in zip(budgets, runs[method].solutions):
    per_task = by_budget.get(float(budget))
    if per_task is None or solution.test_loss is None:
      totals.append(None)
      continue
    assigned = _assigned_test_losses(solution, test)
    totals.append(solution.test_loss + sum(v["ensemble_loss"] - assigned[t] for t, v in per_task.items()))
  return {f"{method} + ensembling": totals}


def selections(study_tables: StudyTables, budgets: Optional[Sequence[float]] = None,
               bootstrap: int = uncertainty.DEFAULT_RESAMPLES) -> dict[str, study.Selection]:
  """``{method: Selection}``: the selection of every method the tables allow, each scored on test.

  Optimal needs every group of tasks converged; HOA the pairs; the surrogate a full-size network
  per task (fitted on the singles, pairs and ``SURROGATE_SAMPLE`` of the groups of 3+ tasks); ESA the
  early table; TAG (and its cosine variant) ``tag.json``. Each selection is scored on test with the networks it chose, looked up among the
  converged networks (a chosen network without converged results has no test loss: see
  ``untrained_choices``). With seed replicas, Optimal, HOA and "selected" carry their uncertainty
  from ``bootstrap`` resamples.
  """
  val, test, esa = study_tables.val, study_tables.test, study_tables.esa
  if val is None and esa is None:
    raise TableError("no results tables to compare methods on; train first")
  budgets = _budgets(study_tables, budgets)
  candidates = None if val is None else selection_candidates(val)
  options = dict(budgets=budgets, with_baselines=False)
  # Selections on the converged tables get their uncertainty from the seed replicas.
  certain = dict(options, replicas=study_tables.replicas, bootstrap=bootstrap, examples=study_tables.examples)
  runs: dict[str, study.Selection] = {}
  if study_tables.main_converged and candidates is not None:
    if _has_all_groups(candidates):
      runs["optimal"] = study.run(candidates, test, converged=val, **certain)
  if esa is not None:
    if val is None:  # an ESA-only run before its retraining phase
      runs["esa"] = _not_yet_converged(study.run(selection_candidates(esa), **options))
    else:
      runs["esa"] = study.run(selection_candidates(esa), test, converged=val, **options)
  if study_tables.main_converged and candidates is not None:
    try:
      runs["hoa"] = study.run(candidates, test, predict="hoa", converged=val, **certain)
    except TableError:
      pass  # no pair networks: HOA is not part of this study
  if study_tables.main_converged and candidates is not None:
    try:
      runs["surrogate"] = study.run(candidates, test, predict="surrogate", converged=val,
                                    predictor_options={"sample": SURROGATE_SAMPLE}, **options)
    except TableError:
      pass  # a task without a full-size network: no surrogate
  if study_tables.tag is not None and val is not None:
    affinities = predictors.Affinities.from_json(study_tables.tag)
    for name in ("tag", "tag_cosine") if affinities.cosine is not None else ("tag",):
      try:
        runs[name] = study.run(val, test, predict=name, affinities=affinities, **options)
      except TableError:
        pass  # measured on other tasks than the tables'
  refined = refinement(study_tables, budgets)
  if refined is not None:
    runs["esa_refined"] = refined.selection
  if "optimal" not in runs and study_tables.main_converged and candidates is not None:
    # Not every subset converged: the best selection among the networks that did (not the optimum).
    runs["selected"] = study.run(candidates, test, converged=val, **certain)
  return {name: dataclasses.replace(run, method=name) for name, run in runs.items()}


def refinement(study_tables: StudyTables, budgets: Optional[Sequence[float]] = None) -> Optional[refine.Refinement]:
  """ESA's refinement loop (``refine.replay``) on the study's tables, when ``study_tables.refine``
  asks for rounds and there are an ESA table and converged networks."""
  if study_tables.refine <= 0 or study_tables.esa is None or study_tables.val is None:
    return None
  val = study_tables.val
  later = frozenset().union(*study_tables.refined)
  available = [frozenset(val.network_key(r) for r in range(val.num_networks)) - later]
  for keys in study_tables.refined:
    available.append(available[-1] | keys)
  return refine.replay(selection_candidates(study_tables.esa), val, study_tables.test,
                       _budgets(study_tables, budgets), available, study_tables.refine)


def _budgets(study_tables: StudyTables, budgets: Optional[Sequence[float]]) -> list[float]:
  reference = study_tables.val if study_tables.val is not None else study_tables.esa
  return study.default_budgets(reference) if budgets is None else [float(b) for b in budgets]


def compare_methods(study_tables: StudyTables, budgets: Optional[Sequence[float]] = None,
                    random_samples: int = 1000, seed: int = 0,
                    runs: Optional[dict[str, study.Selection]] = None,
                    bootstrap: int = uncertainty.DEFAULT_RESAMPLES) -> Comparison:
  """Every method's selection (``selections``, or ``runs`` already made for these budgets) and the
  baselines, with Table 4's rows."""
  budgets = _budgets(study_tables, budgets)
  runs = selections(study_tables, budgets, bootstrap) if runs is None else runs
  val, test = study_tables.val, study_tables.test
  methods = {name: [s.test_loss for s in result.solutions] for name, result in runs.items()}
  comparison = Comparison(budgets, methods, runs, refinement=refinement(study_tables, budgets) if "esa_refined" in runs
                          else None)
  if study_tables.main_converged and val is not None:
    aligned_test = test.aligned_to(val)
    candidate_rows = _candidate_rows(val)
    comparison.baselines = study.baselines_for(val.subset(candidate_rows), aligned_test.subset(candidate_rows),
                                               budgets, random_samples, seed, baseline_tables=(val, aligned_test))
    for name, entries in comparison.baselines.items():
      methods[name] = [None if e is None else e.test_loss for e in entries]
  methods.update(_method_network_rows(study_tables.methods, study_tables.task_names, budgets))
  add_ensemble_rows(comparison, study_tables)
  add_adaptive_rows(comparison, study_tables)
  if study_tables.replicas is not None:
    comparison.intervals = _table4_intervals(comparison, study_tables, random_samples, seed)
    if study_tables.main_converged and val is not None:
      comparison.probability_optimal = study.probability_optimal(
          selection_candidates(val), study_tables.replicas, budgets,
          {name: run.solutions for name, run in runs.items()}, bootstrap, seed, study_tables.examples)
  return comparison


def _table4_intervals(comparison: Comparison, study_tables: StudyTables, random_samples: int,
                      seed: int) -> dict[str, list[Optional[tuple[float, float]]]]:
  """95% intervals of Table 4's totals: a selection's own (winner's curse corrected) where it has
  one, else over the replicates of its fixed networks (ESA and TAG chose on other data; baselines)."""
  val, test = study_tables.replicas
  rows = {val.table.network_key(r): r for r in range(val.table.num_networks)}

  def fixed(networks) -> Optional[tuple[float, float]]:
    if not networks or any(n.key not in rows for n in networks):
      return None
    return uncertainty.fixed_interval(val, test, [tuple(sorted(rows[n.key] for n in networks))])

  intervals = {}
  for name, run in comparison.runs.items():
    intervals[name] = [None if s.test_loss is None else
                       s.uncertainty.test_loss_interval if s.uncertainty is not None else fixed(s.networks)
                       for s in run.solutions]
  for name, entries in (comparison.baselines or {}).items():
    if name != "random":
      intervals[name] = [None if e is None else fixed(e.networks) for e in entries]
  candidates = _candidate_rows(val.table)
  random = []
  for budget in comparison.budgets:
    fills, _ = baselines_lib.random_fills(val.table.subset(candidates), budget, random_samples, seed)
    random.append(uncertainty.fixed_interval(val, test, [tuple(candidates[r] for r in f) for f in fills]))
  intervals["random"] = random
  for name, by_cost in _method_network_totals(study_tables.methods, study_tables.task_names).items():
    intervals[name] = []
    for budget in comparison.budgets:
      replicas = _largest_fitting(by_cost, budget)
      interval = None if replicas is None else uncertainty.t_intervals(np.asarray(replicas)[:, None])
      intervals[name].append(None if interval is None else (float(interval[0][0]), float(interval[1][0])))
  return intervals


@dataclasses.dataclass(frozen=True)
class StandIn:
  """An all-task network trained with a method (balancing, soft sharing or an architecture) against
  choosing groups: its test total and the optimal grouping's at the largest budget within its cost,
  or within the size it was built to where whole widths left it just below (MTAN sized to 1 SNT
  measures 0.99).

  Attributes:
    name: Table 4's row, ``"<method> (all tasks)"``.
    cost: the network's measured cost (SNT).
    total: its test total, the mean over seed replicas; ``interval`` its 95% Student-t interval.
    budget: the largest budget of the comparison within ``cost``, or within the network's nominal
      size when that is larger (None: none is).
    optimal: Optimal's test total at ``budget``, with its interval (``optimal_interval``).
    equal: the equal-weight all-task network's test total at ``budget`` (Table 4's ``all_task``).
    match_budget: the smallest budget at which Optimal's total is no higher than ``total`` (None: none).
  """

  name: str
  cost: float
  total: float
  interval: Optional[tuple[float, float]]
  budget: Optional[float]
  optimal: Optional[float]
  optimal_interval: Optional[tuple[float, float]]
  equal: Optional[float]
  match_budget: Optional[float]

  @property
  def verdict(self) -> str:
    """``"better"`` or ``"worse"`` than the optimal grouping at its cost where the two 95% intervals
    do not overlap, ``"not resolved"`` where they do, ``"unknown"`` without both intervals."""
    if self.interval is None or self.optimal_interval is None:
      return "unknown"
    if self.interval[1] < self.optimal_interval[0]:
      return "better"
    if self.interval[0] > self.optimal_interval[1]:
      return "worse"
    return "not resolved"


def stand_ins(comparison: Comparison, study_tables: StudyTables) -> list[StandIn]:
  """Every all-task method network of ``methods.json`` (each size of it) against Optimal at its cost,
  best total first."""
  budgets = comparison.budgets
  optimal = comparison.methods.get("optimal", [None] * len(budgets))
  optimal_intervals = comparison.intervals.get("optimal", [None] * len(budgets))
  equal = comparison.methods.get("all_task", [None] * len(budgets))
  result = []
  method_networks = _method_network_totals(study_tables.methods, study_tables.task_names)
  nominal_sizes = _method_network_sizes(study_tables.methods, study_tables.task_names)
  for name, cost, replicas in [(n, c, r) for n, by_cost in method_networks.items() for c, r in by_cost.items()]:
    total = float(np.mean(replicas))
    interval = uncertainty.t_intervals(np.asarray(replicas)[:, None])
    reach = max(cost, nominal_sizes[name, cost])
    within = [i for i, b in enumerate(budgets) if b <= reach + COST_TOLERANCE]
    at = within[-1] if within else None
    match = next((b for b, o in zip(budgets, optimal) if o is not None and o <= total), None)
    result.append(StandIn(
        name, cost, total, None if interval is None else (float(interval[0][0]), float(interval[1][0])),
        None if at is None else float(budgets[at]), None if at is None else optimal[at],
        None if at is None else optimal_intervals[at], None if at is None else equal[at],
        None if match is None else float(match)))
  return sorted(result, key=lambda s: s.total)


def add_ensemble_rows(comparison: Comparison, study_tables: StudyTables) -> None:
  """Adds Table 4's "<method> + ensembling" row when the study has ``ensemble.json``."""
  if study_tables.ensemble and study_tables.test is not None:
    comparison.methods.update(_ensemble_rows(study_tables.ensemble, comparison.runs, study_tables.test,
                                             comparison.budgets))


# Table 4's row of the adaptive loop's selection (``adaptive.json``).
ADAPTIVE = "adaptive"


def add_adaptive_rows(comparison: Comparison, study_tables: StudyTables) -> None:
  """Adds Table 4's "adaptive" row when the study has ``adaptive.json``: the loop's selection among
  the networks it trained to convergence, scored on test, at the comparison's budgets."""
  if not study_tables.adaptive:
    return
  solutions = study_tables.adaptive["selection"]["solutions"]
  row = []
  for budget in comparison.budgets:
    match = [s for s in solutions if abs(float(s["budget"]) - budget) <= COST_TOLERANCE]
    row.append(None if not match or match[0].get("test_loss") is None else float(match[0]["test_loss"]))
  comparison.methods[ADAPTIVE] = row


def _chosen_networks(run: study.Selection) -> list[study.ChosenNetwork]:
  """Distinct networks a run chose over all its budgets, in first-chosen order."""
  chosen: dict = {}
  for solution in run.solutions:
    for network in solution.networks:
      chosen.setdefault(network.key, network)
  return list(chosen.values())


def untrained_choices(runs: dict[str, study.Selection]) -> list[tuple[tuple[str, ...], float]]:
  """``(tasks, cost)`` of every network a predicting method (of ``selections``) chose at some budget
  that has no converged results: what the paper trains to convergence before scoring the method."""
  missing: dict = {}
  for method in PREDICTING_METHODS:
    for network in _chosen_networks(runs[method]) if method in runs else ():
      if not network.converged:
        missing.setdefault(network.key, (network.tasks, network.cost))
  return list(missing.values())


# The paper's Early Stopping Approximation trains every candidate on 20% of the training data.
PAPER_ESA_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class Compute:
  """Training a method needs, in trainings (one network trained for the whole schedule, any size) and
  SNT-trainings (each weighted by the network's cost), with what it counts; in network-steps and
  SNT-steps where the schedule is known (``steps_per_training``)."""

  trainings: float
  snt_trainings: float
  counted: str
  steps_per_training: Optional[int] = None

  @property
  def network_steps(self) -> Optional[float]:
    return None if self.steps_per_training is None else self.trainings * self.steps_per_training

  @property
  def snt_steps(self) -> Optional[float]:
    return None if self.steps_per_training is None else self.snt_trainings * self.steps_per_training


def compute_per_method(study_tables: StudyTables, comparison: Comparison,
                       esa_fraction: Optional[float] = None) -> dict[str, Compute]:
  """What each selection method costs to run under the paper's procedure.

  Optimal (and "selected") trains every candidate to convergence; ESA trains every candidate for the
  early fraction (the schedule's ESA step, else ``esa_fraction``, else the paper's 20%), then its
  chosen networks (over all budgets) to convergence; a predictor (``predictors``: HOA, the surrogate,
  TAG) trains what its prediction needed (``Selection.prediction_compute``: HOA the singles, half-size
  singles and pairs; TAG one all-task network with its measurement passes), then its chosen networks
  that are not among those. Networks trained with a balancing method count their own steps
  (``methods.json``, with a schedule).
  """
  if study_tables.val is None and study_tables.esa is None:
    return {}
  schedule = study_tables.schedule
  total = None if schedule is None else schedule.total_steps
  if esa_fraction is None:
    esa_fraction = PAPER_ESA_FRACTION if schedule is None else schedule.esa_step / schedule.total_steps
  # The main run's candidates (the converged table may hold retrained networks too).
  candidates = selection_candidates(study_tables.esa if study_tables.esa is not None else study_tables.val)
  costs = [float(c) for c in candidates.costs]
  result = {}

  def chosen_beyond(method: str, trained: frozenset = frozenset()) -> tuple[int, float]:
    chosen = [n for n in _chosen_networks(comparison.runs[method]) if n.key not in trained]
    return len(chosen), float(sum(n.cost for n in chosen))

  def networks(count: int) -> str:
    return f"{count} chosen network{'' if count == 1 else 's'}"

  for method in ("optimal", "selected"):
    if method in comparison.runs:
      result[method] = Compute(len(costs), sum(costs), f"{len(costs)} candidate networks", total)
  if "esa" in comparison.runs:
    count, snt = chosen_beyond("esa")
    result["esa"] = Compute(len(costs) * esa_fraction + count, sum(costs) * esa_fraction + snt,
                            f"{len(costs)} candidates x {esa_fraction:g} of a training + {networks(count)}",
                            total)
  if "esa" in result and comparison.refinement is not None:
    rounds = comparison.refinement.rounds
    trained = sum(r.trainings for r in rounds)
    esa = result["esa"]
    result["esa_refined"] = Compute(esa.trainings + trained, esa.snt_trainings + sum(r.snt_trainings for r in rounds),
                                    f"ESA's + {len(rounds)} refinement round(s) training {trained} network(s)", total)
  for method, run in comparison.runs.items():
    needed = run.prediction_compute
    if needed is not None:
      count, snt = chosen_beyond(method, needed.trained)
      result[method] = Compute(needed.trainings + count, needed.snt_trainings + snt,
                               f"{needed.counted} + {networks(count)}", total)
  if study_tables.adaptive:
    looped = study_tables.adaptive
    result[ADAPTIVE] = Compute(float(looped["trainings"]), float(looped["snt_trainings"]), looped["counted"], total)
  task_names = set(study_tables.task_names)
  for name, entry in study_tables.methods.items():
    steps = entry.get("network_steps")
    if steps is not None and total:
      label = name
      if set(entry["tasks"]) == task_names:  # one row per size: config.networks.all_task_sizes
        size = float(entry.get("size", 1.0))
        label = f"{entry['method']} (all tasks)" + ("" if size == 1.0 else f" @{size:g}")
      result[label] = Compute(steps / total, steps / total * float(entry["cost"]), f"{name}: its own training", total)
  return result


# A network counts as converged when its best validation loss improved by less than this fraction over
# the last CONVERGENCE_WINDOW of its training (validations flat; the plateau schedule has then usually
# lowered its learning rate several times).
CONVERGED_IMPROVEMENT = 0.01
CONVERGENCE_WINDOW = 0.2


@dataclasses.dataclass(frozen=True)
class Convergence:
  """How flat the main run's validation curves ended (``WORKDIR/log.jsonl``).

  Attributes:
    networks: networks with at least three validations.
    flat: those whose best validation loss improved by less than ``CONVERGED_IMPROVEMENT`` over the
      last ``CONVERGENCE_WINDOW`` of their validations.
    window_start: the step that window starts at.
    largest: the network that improved most over the window, and the relative improvement.
  """

  networks: int
  flat: int
  window_start: int
  largest: tuple[str, float]


def convergence(curves: dict[str, list[tuple[int, float]]]) -> Optional[Convergence]:
  """From ``Workdir.read_validations``'s curves; None when no network was validated three times."""
  improvements, window_start = {}, 0
  for name, curve in curves.items():
    if len(curve) < 3:
      continue
    steps = np.array([step for step, _ in curve])
    losses = np.array([loss for _, loss in curve])
    window_start = int(steps[-1] * (1 - CONVERGENCE_WINDOW))
    before = losses[steps <= window_start]
    best = losses.min()
    improvements[name] = float((before.min() - best) / best) if before.size else np.inf
  if not improvements:
    return None
  largest = max(improvements, key=improvements.get)
  flat = sum(value < CONVERGED_IMPROVEMENT for value in improvements.values())
  return Convergence(len(improvements), flat, window_start, (largest, improvements[largest]))


@dataclasses.dataclass(frozen=True)
class CapacityGap:
  """One task's smallest single-task network against its 1-SNT one (test).

  ``relative``: the smaller network's loss over the standard one's, minus 1 (mean over seed
  replicates; positive: the smaller network is worse); ``interval``: its 95% Student-t interval over
  replicates, None with one seed.
  """

  task: str
  size: float
  relative: float
  interval: Optional[tuple[float, float]]

  @property
  def significant(self) -> bool:
    return self.interval is not None and self.interval[0] > 0


def capacity_gaps(test: ResultsTable, replicas: Optional[tables.Replicas] = None) -> list[CapacityGap]:
  """Per task with both, its cheapest single-task network against its 1-SNT single-task network:
  whether the study is in the regime where network size matters (the paper's budget trade-off).
  With ``replicas`` (of the test table) the gaps are their means over seeds, with intervals."""
  if replicas is not None:
    test = replicas.table
  pairs = {}
  for j, task in enumerate(test.task_names):
    singles = [r for r, tasks in enumerate(test.network_tasks) if tuple(tasks) == (task,)]
    full = [r for r in singles if tables.has_size(test.costs[r], FULL_COST)]
    smaller = [r for r in singles if test.costs[r] < FULL_COST - COST_TOLERANCE]
    if full and smaller:
      pairs[task] = (j, min(smaller, key=lambda r: test.costs[r]), full[0])

  def gaps(table: ResultsTable) -> np.ndarray:
    return np.array([table.losses[small, j] / table.losses[full, j] - 1 for j, small, full in pairs.values()])

  relative = gaps(test)
  intervals = None
  if replicas is not None:
    values = uncertainty.replicate_values(replicas, gaps)
    relative, intervals = values.mean(axis=0), uncertainty.t_intervals(values)
  return [CapacityGap(task, float(test.costs[small]), float(relative[i]),
                      None if intervals is None else (float(intervals[0][i]), float(intervals[1][i])))
          for i, (task, (_, small, _)) in enumerate(pairs.items())]

# Figure 6 shows the predictions of the networks chosen at this budget (the paper's Figure 6: 2.5 SNT).
QUALITATIVE_BUDGET = 2.5


def serving_networks(study_tables: StudyTables, comparison: Comparison, budget: float = QUALITATIVE_BUDGET
                     ) -> tuple[float, dict[str, dict[str, str]]]:
  """Figure 6's networks: ``(the budget of comparison's closest to budget, {method: {task: the name of
  the network serving it there}})`` for every selecting method whose choice there is trained to
  convergence, then the all-task and independent baselines."""
  index = int(np.argmin([abs(b - budget) for b in comparison.budgets]))
  serving: dict[str, dict[str, study.ChosenNetwork]] = {}
  for method, run in comparison.runs.items():
    solution = run.solutions[index]
    if not solution.infeasible and not solution.untrained:
      serving[method] = {task: solution.networks[i] for task, i in solution.assignment.items()}
  for name in ("all_task", "independent"):
    entry = (comparison.baselines or {}).get(name, [None] * len(comparison.budgets))[index]
    if entry is not None and entry.networks:
      # Each task served by the first of the baseline's networks that solves it.
      serving[name] = {task: network for network in reversed(entry.networks) for task in network.tasks}
  return comparison.budgets[index], {
      method: dict(zip(per_task, study_tables.names_of([(n.tasks, n.cost) for n in per_task.values()])))
      for method, per_task in serving.items()}
