"""Writes ``WORKDIR/report.md`` and its figures from the workdir's results files.

Read (``tg_jax.workdir.load_study``): the main run's results tables and ``networks.json``, the
retraining phase's (networks a predicting method chose, trained to convergence afterwards), and
where present ``methods.json`` (networks trained with a balancing method), ``tag.json`` (TAG
affinities) and ``ensemble.json`` (ensembling gains). Every number in the report is recomputed from
those files, so a report can always be regenerated (``python -m tg_jax.report --workdir=DIR``) and
traced back to them.
"""

from __future__ import annotations

import os
from typing import Collection, Optional, Sequence

import numpy as np

from tg_jax import records
from tg_jax import workdir as workdir_lib
from tg_jax.reporting import analysis, figures
from tg_jax.reporting import helper_tasks as helper_lib
from tg_jax.reporting import regret as regret_lib
from tg_jax.reporting import transfer as transfer_lib
from tg_jax.selection import hoa, study, tables
from tg_jax.selection.tables import TableError

# The workdir's layout with paths relative to the workdir, as the report names its sources.
_FILES = workdir_lib.Workdir("")


def _format(value: Optional[float], digits: int = 4) -> str:
  return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return lines


def _matrix_table(matrix: np.ndarray, labels: Sequence[str],
                  intervals: Optional[tuple[np.ndarray, np.ndarray]] = None,
                  corner: str = "task \\ trained with") -> list[str]:
  """Percentages; with intervals, each entry's 95% interval and a * where it excludes zero."""

  def cell(i: int, j: int) -> str:
    if not np.isfinite(matrix[i, j]):
      return ""
    if intervals is None:
      return f"{100 * matrix[i, j]:+.1f}%"
    low, high = intervals[0][i, j], intervals[1][i, j]
    mark = "*" if low > 0 or high < 0 else ""
    return f"{100 * matrix[i, j]:+.1f}%{mark} [{100 * low:+.1f}, {100 * high:+.1f}]"

  rows = [[label] + [cell(i, j) for j in range(len(labels))] for i, label in enumerate(labels)]
  return _markdown_table([corner] + list(labels), rows)


def _significant(intervals: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
  low, high = intervals
  return np.isfinite(low) & ((low > 0) | (high < 0))


def _not_beaten(networks: Sequence[records.NetworkRecord]) -> list[tuple[str, str]]:
  return [(n.name, t) for n in networks if n.status == records.TRAINED
          for t, v in n.improvement_over_constant["test"].items() if not v > 0]


def improvement_summary(networks: Sequence[records.NetworkRecord]) -> str:
  """One line: does every trained network beat the constant predictor on each of its tasks?"""
  beaten = _not_beaten(networks)
  if not beaten:
    return "Every trained network beats the constant predictor on each of its tasks (test loss)."
  return "Not better than the constant predictor: " + ", ".join(f"{n} on {t}" for n, t in beaten) + "."


def _improvement_section(study_tables: workdir_lib.StudyTables) -> list[str]:
  """How much each network beats the constant predictor (the training mean) by, per task."""
  networks = study_tables.networks
  constant = study_tables.runs[0].constant_predictor["test"]
  task_order = list(dict.fromkeys(t for n in networks for t in n.tasks))
  rows = []
  for network in networks:
    improvements = network.improvement_over_constant["test"]
    rows.append([network.name, f"{network.cost:.3f}", network.status] +
                ["" if improvements.get(t) is None else f"{100 * improvements[t]:+.1f}%" for t in task_order])
  return (["## Improvement over the constant predictor", "",
           "Test loss relative to predicting the training mean of each label (class frequencies for "
           "segmentation), 1 - loss / constant loss. Constant predictor's test losses: "
           + ", ".join(f"{t} {v:.4f}" for t, v in constant.items()) + ".", ""]
          + _markdown_table(["network", "cost", "status"] + task_order, rows)
          + ["", improvement_summary(networks), ""])


def _network_label(tasks: Sequence[str], served: Collection[str], cost: float) -> str:
  """``a+b @0.5``: the tasks a chosen network serves (``(+c unused)`` for decoders it does not), its size
  when not one SNT."""
  used = [t for t in tasks if t in served]
  unused = [t for t in tasks if t not in served]
  name = ("+".join(used) or "serves nothing") + (f" (+{'+'.join(unused)} unused)" if unused else "")
  return name + ("" if tables.has_size(cost, 1.0) else f" @{cost:.2g}")


def _groups_text(solution: study.Solution) -> str:
  """``a+b; c@0.5`` for a solution's networks (``_network_label`` each)."""
  if solution.infeasible:
    return "infeasible"
  return "; ".join(_network_label(network.tasks, solution.served_by(index), network.cost)
                   for index, network in enumerate(solution.networks))


def _sources(study_tables: workdir_lib.StudyTables) -> list[str]:
  lines = ["Where the numbers come from (all paths relative to the workdir):", "",
           f"- `{_FILES.table('val')}`, `{_FILES.table('test')}`: validation and test losses of each network of "
           "the main run on each of its tasks, both from its checkpoint with the lowest mean validation loss"
           + ("" if study_tables.main_converged else " (this run stopped early: they are not converged and "
              "are used only through the ESA table)") + ";"]
  if study_tables.esa is not None:
    lines.append(f"- `{_FILES.table('esa')}`: validation losses at step {study_tables.schedule.esa_step if study_tables.schedule else '?'}"
                 " (the early stopping approximation);")
  if study_tables.retrained:
    lines.append(f"- `{_FILES.retrain.table('val')}`, `test.csv`: the retraining phase, networks chosen from "
                 f"predictions trained to convergence: {', '.join(study_tables.retrained)};")
  for index, keys in enumerate(study_tables.refined, start=1):
    lines.append(f"- `{_FILES.refine_round(index).table('val')}`, `test.csv`: ESA refinement round {index}'s "
                 f"networks trained to convergence: {', '.join(study_tables.names_of(keys))};")
  if study_tables.methods:
    lines.append(f"- `{_FILES.methods}`: networks trained with a balancing method or soft sharing: "
                 f"{', '.join(study_tables.methods)};")
  if study_tables.tag is not None:
    lines.append(f"- `{_FILES.tag}`: TAG's inter-task affinities measured while training "
                 f"{study_tables.tag['network']};")
  if study_tables.transfer:
    lines.append(f"- `{_FILES.transfer.methods}`: the transfer phase, {len(study_tables.transfer)} decoders each "
                 f"trained on another task's frozen single-task encoder (Table 3);")
  if study_tables.ensemble is not None:
    lines.append(f"- `{_FILES.ensemble}`: test losses of ensembles of the chosen networks;")
  if study_tables.predictions is not None:
    lines.append(f"- `{_FILES.predictions}`: the chosen networks' predictions on a few test images (Figure 6);")
  lines.append(f"- `{_FILES.networks}`: schedule, sizes and the constant predictor's losses.")
  return lines + [""]


def _robust_lines(study_tables: workdir_lib.StudyTables, comparison: analysis.Comparison, main_method: str,
                  robust_pairs: Optional[np.ndarray]) -> list[str]:
  """What the data support, from the intervals: which relations, groupings and method differences are
  resolved; with one seed, which conclusions cannot be drawn at all."""
  lines = ["## What is robust", ""]
  if study_tables.replicas is None:
    return lines + [
        "Every network was trained with one seed, so nothing here has an interval. Table 1's signs, the "
        "groupings chosen and the order of the methods in Table 4 are each one draw of the training noise; "
        "on this scale another seed can flip them. Train every network with 2+ seeds "
        "(`config.networks.seeds`) before drawing conclusions from them.", ""]
  replicates = int(study_tables.replicas[0].counts.min())
  lines.append(f"From {replicates} seeds per network (95% intervals over seeds):")
  if robust_pairs is not None:
    names = study_tables.task_names
    found = [f"{names[j]} {'helps' if r > 0 else 'hurts'} {names[i]}"
             for (i, j), r in np.ndenumerate(analysis.pair_relative_performance(study_tables.test))
             if robust_pairs[i, j]]
    total = len(names) * (len(names) - 1)
    lines.append(f"- Table 1: {len(found)} of {total} entries are resolved"
                 + (f": {', '.join(found)}" if found else "; the others are within the seed noise") + ".")
  run = comparison.runs[main_method]
  certain = [s for s in run.solutions if s.uncertainty is not None]
  if certain:
    likely = [f"{s.budget:g}" for s in certain if s.uncertainty.probability_optimal > 0.5]
    unsure = [f"{s.budget:g} (p={s.uncertainty.probability_optimal:.2f})" for s in certain
              if s.uncertainty.probability_optimal <= 0.5]
    lines.append(f"- The {main_method} grouping is the optimum in most resamples (p > 0.5) at budget(s) "
                 f"{', '.join(likely) or 'none'}" + (f"; not resolved at {', '.join(unsure)}" if unsure else "") + ".")
    for baseline in ("all_task", "independent", "random"):
      resolved, unresolved = [], []
      for solution in certain:
        difference = next((d for d in solution.uncertainty.differences if d.baseline == baseline), None)
        if difference is not None:
          (resolved if difference.resolved else unresolved).append(f"{solution.budget:g}: {difference.describe()}")
      if resolved or unresolved:
        lines.append(f"- Against {baseline}: " + "; ".join(resolved + unresolved) + ".")
  return lines + [""]


def _regime_lines(paths: workdir_lib.Workdir, study_tables: workdir_lib.StudyTables) -> list[str]:
  """Whether this run is in the regime the paper's question needs: trained to convergence, and with
  network size mattering (otherwise a budget trade-off between groups and sizes does not exist)."""
  lines = ["## Training regime", ""]
  converged = analysis.convergence(paths.read_validations())
  if converged is None:
    lines.append(f"- Convergence: no network was validated three times (`{_FILES.log}`).")
  else:
    name, improvement = converged.largest
    lines.append(f"- Convergence: {converged.flat} of {converged.networks} networks improved their best validation "
                 f"loss by less than {100 * analysis.CONVERGED_IMPROVEMENT:g}% after step {converged.window_start} "
                 f"(the last {100 * analysis.CONVERGENCE_WINDOW:g}% of training); the most, {name}, by "
                 f"{100 * improvement:.1f}% (`{_FILES.log}`).")
  if study_tables.test is not None:
    replicas = None if study_tables.replicas is None else study_tables.replicas[1]
    gaps = analysis.capacity_gaps(study_tables.test, replicas)
    if gaps:
      described = [f"{gap.task} {100 * gap.relative:+.1f}%"
                   + ("" if gap.interval is None else
                      f" [{100 * gap.interval[0]:+.1f}, {100 * gap.interval[1]:+.1f}]" + ("*" if gap.significant else ""))
                   for gap in gaps]
      sizes = sorted({f"{gap.size:.2g}" for gap in gaps})
      verdict = ("no seed replicas, so whether size matters beyond the training noise is not resolved"
                 if replicas is None else
                 f"worse beyond the seed noise (* : 95% interval above 0) on {sum(g.significant for g in gaps)} "
                 f"of {len(gaps)} tasks")
      lines.append(f"- Capacity: the smallest single-task networks ({', '.join(sizes)} SNT) against the 1-SNT ones, "
                   f"test loss: {'; '.join(described)}; {verdict}.")
  return lines + [""]


def _size_matched(study_tables: workdir_lib.StudyTables) -> list[analysis.SizeMatched]:
  if study_tables.test is None:
    return []
  return analysis.size_matched(study_tables.test, None if study_tables.replicas is None else study_tables.replicas[1])


def _size_matched_json(per_k: Sequence[analysis.SizeMatched]) -> list[dict]:
  return [{"k": e.k, "groups": ["+".join(g) for g in e.groups], "relative": e.relative.tolist(), "mean": e.mean,
           "mean_interval": e.mean_interval, "single_costs": list(e.single_costs)} for e in per_k]


def _figure2_lines(per_k: Sequence[analysis.SizeMatched], figure_dir: str) -> list[str]:
  """Figure 2 and its table: each k-task network against k single-task networks of 1/k SNT."""
  lines = ["## Figure 2: one k-task network against k single-task networks of 1/k SNT (test)", ""]
  if not per_k:
    return lines + ["Not available: it needs full-size networks of 2+ tasks and single-task networks of 1/k SNT "
                    "for their tasks (experiments/study.py trains 1/2, 1/3, 1/4 and 1/5).", ""]
  figures.size_matched(per_k, os.path.join(figure_dir, "figure2_size_matched.png"))
  intervals = any(entry.mean_interval is not None for entry in per_k)
  lines += ["Both sides cost one standard network. Per group of k tasks: the mean over its tasks of 1 - the "
            "task's test loss in the group's network / its loss in its own 1/k-SNT single-task network "
            f"(positive: sharing beats splitting); then the mean over the groups of each size. From "
            f"`{_FILES.table('test')}`." + (" With its 95% interval over seeds." if intervals else ""), ""]

  def percent(value: float) -> str:
    return f"{100 * value:+.1f}%"

  rows = []
  for entry in per_k:
    order = np.argsort(entry.relative)
    cell = percent(entry.mean) + ("" if entry.mean_interval is None else
                                  f" [{100 * entry.mean_interval[0]:+.1f}, {100 * entry.mean_interval[1]:+.1f}]")
    resolved = ""
    if entry.group_intervals is not None:
      lows, highs = entry.group_intervals
      resolved = f"{int(np.sum(lows > 0))} / {int(np.sum(highs < 0))}"
    measured = f"{min(entry.single_costs):.3f}" + ("" if max(entry.single_costs) == min(entry.single_costs)
                                                     else f"-{max(entry.single_costs):.3f}")
    rows.append([str(entry.k), f"1/{entry.k} ({measured})", str(len(entry.groups)), cell,
                 f"{int(np.sum(entry.relative > 0))} of {len(entry.groups)}"]
                + ([resolved] if intervals else [])
                + [f"{'+'.join(entry.groups[order[-1]])} ({percent(entry.relative[order[-1]])})",
                   f"{'+'.join(entry.groups[order[0]])} ({percent(entry.relative[order[0]])})"])
  header = (["k", "single-task size, SNT (measured)", "groups", "mean gain", "groups better"]
            + (["better / worse beyond seed noise"] if intervals else []) + ["best group", "worst group"])
  lines += _markdown_table(header, rows)
  return lines + ["", f"![Figure 2]({_FILES.figures}/figure2_size_matched.png)", ""]


def _table4_notes(comparison: analysis.Comparison) -> list[str]:
  notes = {
      "optimal": "the exact selection on the converged validation losses of every candidate network",
      "selected": "the exact selection among the networks trained (not every subset was: not the optimum)",
      "esa": "selection on the early (ESA) validation losses; chosen networks scored converged",
      "esa_refined": "ESA refined (the paper's section 6 caveat): networks that serve nothing or are worse than "
                     "predicted once trained are dropped and the selection rerun, until stable (see ESA refinement)",
      "hoa": "selection on HOA predictions from the pairs; chosen networks scored converged",
      "surrogate": f"selection on a ridge surrogate's predictions, fitted on the singles, pairs and "
                   f"{100 * analysis.SURROGATE_SAMPLE:.0f}% of the groups of 3+ tasks; chosen networks scored converged",
      "tag": "selection on TAG affinity scores; chosen groups scored converged",
      "tag_cosine": "selection on TAG's gradient cosine similarities (the TAG paper's CS); chosen groups scored "
                    "converged",
      "all_task": "the largest all-task network that fits (wider than 1 SNT: `config.networks.all_task_sizes`)",
      "independent": "one single-task network per task, the largest size that fits (1/5 to 1 SNT)",
      "random": "mean of random fills of the budget that serve every task",
      "pessimal": "the worst such fill",
  }
  lines = []
  for name in comparison.methods:
    if name in notes:
      lines.append(f"- {name}: {notes[name]}")
    elif name.endswith("(all tasks)"):
      lines.append(f"- {name}: the costliest all-task network trained with that method that fits "
                   f"(`{_FILES.methods}`; wider ones: `config.networks.all_task_sizes`)")
    elif name.endswith("ensembling"):
      lines.append(f"- {name}: that selection with each task solved by 2+ chosen networks served by their "
                   f"ensemble (`{_FILES.ensemble}`)")
  return lines


def _approximation_lines(study_tables: workdir_lib.StudyTables) -> list[str]:
  lines = ["## How good are the approximations", ""]
  val, esa = study_tables.val, study_tables.esa
  try:
    accuracy = hoa.accuracy(val) if val is not None and study_tables.main_converged else None
  except TableError as error:  # no pair networks
    lines.append(f"- HOA prediction error: not available: {error}")
    accuracy = False
  if accuracy is None:
    lines.append("- HOA prediction error: no converged groups of 3+ tasks to compare with.")
  elif accuracy:
    lines.append(f"- HOA prediction error over {accuracy.count} measured higher-order losses "
                 f"(`{_FILES.table('val')}`): average max-ratio error {100 * accuracy.max_ratio_error:.1f}%, "
                 f"average overestimate {100 * accuracy.overestimate:.1f}% (paper: 5.2% and 1.4%).")
  if esa is not None and val is not None:
    correlation = analysis.esa_correlation(val, esa)
    if correlation.count < 3:
      lines.append("- ESA correlation: not available: fewer than 3 losses relative to a full single-task network "
                   "(train the single-task networks too).")
      return lines + [""]
    per_task = ", ".join(f"{t} {r:.2f}" for t, r in correlation.per_task.items())
    lines.append(f"- ESA: Pearson r between early (`{_FILES.table('esa')}`) and final validation losses "
                 f"{correlation.pooled:.2f} over {correlation.count} (network, task) losses relative to each task's "
                 f"single-task network (paper: 0.49); within each task: {per_task or 'too few networks'}.")
  return lines + [""]


def _compute_lines(study_tables: workdir_lib.StudyTables, comparison: analysis.Comparison) -> list[str]:
  compute = analysis.compute_per_method(study_tables, comparison)
  if not compute:
    return []
  rows = [[name, f"{c.trainings:.4g}", "-" if c.network_steps is None else f"{c.network_steps:,.0f}",
           "-" if c.snt_steps is None else f"{c.snt_steps:,.1f}", c.counted] for name, c in compute.items()]
  return (["## Training compute per method", "",
           "Trainings: networks trained for the whole schedule, whatever their size; network-steps: one network "
           "trained for one step; SNT-steps weight each network by its cost in standard networks. Under the "
           "paper's procedure a predicting method trains its chosen networks (over all budgets) to convergence "
           f"after predicting, whether or not this study had them already. Schedule from `{_FILES.networks}`.", ""]
          + _markdown_table(["method", "trainings", "network-steps", "SNT-steps", "what is counted"], rows) + [""])


def _regret_lines(measured: Optional[regret_lib.Regret], figure_dir: str) -> list[str]:
  if measured is None:
    return []
  regret_lib.figure(measured, os.path.join(figure_dir, "regret_vs_compute.png"))
  return (["## Regret against training compute", ""] + regret_lib.text_lines(measured)
          + [f"![Regret against compute]({_FILES.figures}/regret_vs_compute.png)", ""])


def figure5_name(method: str) -> str:
  """Figure 5's file for one method's groupings, under ``figures/``."""
  return f"figure5_groupings_{method}.png"


def _figure5_lines(comparison: analysis.Comparison, figure_dir: str) -> list[str]:
  """Figure 5 for every selecting method, and with seed replicas a table of each grouping's
  probability of being the optimum."""
  probabilities = comparison.probability_optimal
  reference = "optimal" if "optimal" in comparison.runs else "the best selection among the trained networks"
  lines = ["## Figure 5: each method's grouping at each budget", "",
           "Per method and budget (fractional budgets included), the networks chosen (area proportional to cost; "
           "sizes other than 1 SNT written beside them; hatched: predicted, not trained yet) joined to the tasks "
           "they serve; grey: decoders a network has but does not use."
           + (f" p: the share of bootstrap resamples over seeds in which the grouping is {reference}."
              if probabilities else ""), ""]
  if probabilities:
    rows = [[name] + ["-" if p is None else f"{p:.2f}" for p in values] for name, values in probabilities.items()]
    lines += ["Probability that each method's grouping is the optimum (share of resamples):", ""]
    lines += _markdown_table(["method"] + [f"{b:g}" for b in comparison.budgets], rows) + [""]
  for method, run in comparison.runs.items():
    figures.groupings(run, os.path.join(figure_dir, figure5_name(method)), title=f"{method} grouping per budget",
                      probabilities=probabilities.get(method))
    lines += [f"![Figure 5, {method}]({_FILES.figures}/{figure5_name(method)})", ""]
  return lines


def _figure6_lines(study_tables: workdir_lib.StudyTables, comparison: analysis.Comparison,
                   figure_dir: str) -> list[str]:
  """Figure 6 from ``predictions.npz``, when it holds the networks this comparison chose."""
  predicted = study_tables.predictions
  if predicted is None:
    return []
  budget, named = analysis.serving_networks(study_tables, comparison)
  title = f"## Figure 6: predictions of the networks chosen at budget {predicted.budget:g}"
  if predicted.budget != budget or predicted.serving() != named:
    return [title, "", f"`{_FILES.predictions}` holds other networks' predictions than the ones chosen at budget "
            f"{budget:g} now; rerun `python -m tg_jax.main` with the same config to refresh it.", ""]
  figures.predictions(predicted, os.path.join(figure_dir, "figure6_predictions.png"))
  rows = [[method] + [named[method][t] for t in predicted.tasks] for method in predicted.methods]
  return ([title, "",
           f"The first {len(predicted.images)} test images, their labels and each method's predictions (`{_FILES.predictions}`, "
           "from each network's best-validation checkpoint); dense labels drawn on the ground truth's scale, "
           "segmentation as class colours. The network serving each task:", ""]
          + _markdown_table(["method"] + list(predicted.tasks), rows)
          + ["", f"![Figure 6]({_FILES.figures}/figure6_predictions.png)", ""])


def _refinement_lines(study_tables: workdir_lib.StudyTables, comparison: analysis.Comparison) -> list[str]:
  """ESA's refinement rounds: what each dropped and why, what it trained and at what compute."""
  refined = comparison.refinement
  if refined is None:
    return []
  schedule = study_tables.schedule
  steps = None if schedule is None else schedule.total_steps
  lines = ["## ESA refinement", "",
           f"After ESA's chosen networks were trained to convergence, networks that serve no task or are worse than "
           f"predicted (a candidate predicted no better on the tasks they serve, at no greater cost, is better once "
           f"trained) are dropped at that budget and ESA's selection rerun without them, training what the new choice "
           f"needs (`{os.path.dirname(_FILES.refine_round(1).path)}/round_<k>/`), at most {study_tables.refine} round(s). "
           + ("Stable: the last choice drops nothing." if refined.stable else
              "Not stable: the rounds ran out, or the last round's networks are not trained yet"
              + (f" ({', '.join('+'.join(t) + f' @ {c:g}' for t, c in refined.pending)})" if refined.pending else "")
              + "."), ""]
  if not refined.rounds:
    return lines + ["ESA's choice needed no refinement.", ""]
  rows = []
  for round_ in refined.rounds:
    dropped = "; ".join(f"{b:g}: {', '.join(labels)}" for b, labels in round_.dropped.items())
    trained = ", ".join("+".join(t) + ("" if tables.has_size(c, 1.0) else f" @ {c:g}") for t, c in round_.trained)
    rows.append([str(round_.index), dropped, trained or "-", str(round_.trainings),
                 "-" if steps is None else f"{round_.trainings * steps:,}",
                 "-" if steps is None else f"{round_.snt_trainings * steps:,.1f}"])
  lines += _markdown_table(["round", "dropped (budget: networks)", "trained", "trainings", "network-steps",
                            "SNT-steps"], rows)
  reasons = {label: why for round_ in refined.rounds for label, why in round_.reasons.items()}
  return lines + [""] + [f"- {label}: {why}" for label, why in reasons.items()] + [""]


def _json_groups_text(solution: dict) -> str:
  """``_groups_text`` of a solution as ``Solution.to_json`` writes it."""
  if solution.get("infeasible"):
    return "infeasible"
  return "; ".join(_network_label(network["tasks"], {t for t, i in solution["assignment"].items() if i == index},
                                  network["cost"])
                   for index, network in enumerate(solution["networks"]))


def _adaptive_lines(study_tables: workdir_lib.StudyTables, comparison: analysis.Comparison) -> list[str]:
  """The adaptive loop (``adaptive.json``): its compute, its rounds and its selection per budget,
  against Optimal's where every group was trained."""
  looped = study_tables.adaptive
  if not looped:
    return []
  share = (f" ({100 * looped['trainings'] / looped['candidates']:.0f}% of the {looped['candidates']} trainings of "
           f"every group and half-size single)" if looped.get("candidates") else "")
  steps = looped.get("network_steps")
  lines = ["## Adaptive training", "",
           f"The loop (`config.selection.adaptive`; its trainings in `{os.path.dirname(_FILES.adaptive_training(1, True).path)}/`, "
           f"its selection in `{os.path.basename(_FILES.adaptive)}`) trained {looped['trainings']:g} trainings' worth"
           + share + ("" if steps is None else f", {steps:,.0f} network-steps") + f": {looped['counted']}. "
           "Each round screens the groups the surrogate's selection wants with early (ESA) losses and trains to "
           "convergence those that can still change the selection; the selection is made among the networks "
           "trained to convergence (validation) and scored on test.", ""]
  if looped["rounds"]:
    lines += _markdown_table(["round", "screened (early losses)", "trained to convergence", "trainings"],
                             [[str(k + 1), ", ".join(r["screened"]) or "-", ", ".join(r["promoted"]) or "-",
                               f"{r['trainings']:g}"] for k, r in enumerate(looped["rounds"])]) + [""]
  optimal = comparison.methods.get("optimal")
  rows = []
  for solution in looped["selection"]["solutions"]:
    budget = float(solution["budget"])
    total = solution.get("test_loss")
    row = [f"{budget:g}", _json_groups_text(solution), _format(total, 3)]
    if optimal is not None:
      index = next((i for i, b in enumerate(comparison.budgets) if abs(b - budget) <= analysis.COST_TOLERANCE), None)
      best = None if index is None else optimal[index]
      row += [_format(best, 3), "-" if best is None or total is None else f"{100 * (total - best) / best:+.1f}%"]
    rows.append(row)
  header = ["budget", "networks (tasks served)", "test total"] + (["optimal", "regret"] if optimal is not None else [])
  return lines + _markdown_table(header, rows) + [""]


def _groupings_lines(comparison: analysis.Comparison) -> list[str]:
  runs = comparison.runs
  rows = [[f"{budget:g}"] + [_groups_text(run.solutions[i]) for run in runs.values()]
          for i, budget in enumerate(comparison.budgets)]
  return (["## Networks each method chose", "",
           "Per budget, the networks chosen and the tasks each serves (decoders it has but does not use in "
           "brackets; sizes other than 1 SNT after @).", ""]
          + _markdown_table(["budget"] + list(runs), rows) + [""])


def _stand_in_lines(study_tables: workdir_lib.StudyTables, comparison: analysis.Comparison,
                    figure_dir: str) -> list[str]:
  """Can a balancing method or an architecture stand in for choosing groups? Each all-task method
  network against the optimal grouping at its cost, with intervals over seeds, and its figure."""
  entries = analysis.stand_ins(comparison, study_tables)
  if not entries or "optimal" not in comparison.methods:
    return []
  figures.methods_against_grouping(entries, os.path.join(figure_dir, "methods_against_grouping.png"))
  interval = lambda pair: "" if pair is None else f" [{pair[0]:.3f}, {pair[1]:.3f}]"
  rows = [[e.name.removesuffix(" (all tasks)"), f"{e.cost:.2g}", f"{e.total:.3f}{interval(e.interval)}",
           "-" if e.equal is None else f"{e.total - e.equal:+.3f}",
           "-" if e.optimal is None else f"{e.optimal:.3f}{interval(e.optimal_interval)} (budget {e.budget:g})",
           e.verdict, "-" if e.match_budget is None else f"{e.match_budget:g}"]
          for e in entries]
  better = [e.name.removesuffix(" (all tasks)") for e in entries if e.verdict == "better"]
  unresolved = [e.name.removesuffix(" (all tasks)") for e in entries if e.verdict == "not resolved"]
  worse = sum(e.verdict == "worse" for e in entries)
  answer = (f"{worse} of {len(entries)} method networks are worse than the optimal grouping at their cost "
            f"(95% intervals over seeds apart); better: {', '.join(better) or 'none'}; "
            f"not resolved with these seeds: {', '.join(unresolved) or 'none'}.")
  return ["## Methods against grouping", "",
          "Can a balancing method or an architecture stand in for choosing groups? Each all-task network "
          f"trained with a method (`{_FILES.methods}`) against the optimal grouping of equal-weight networks at "
          "the largest budget within its cost (or the size it was built to, where whole widths left it just "
          "below). Totals are means over seeds with 95% intervals (Optimal's "
          "shifted for its winner's curse); 'vs equal' is the difference from the equal-weight all-task "
          "network at that budget; 'grouping matches at' is the smallest budget at which Optimal's total is "
          "no higher than the method's.", "",
          *_markdown_table(["method", "cost", "test total", "vs equal", "optimal grouping", "verdict",
                            "grouping matches at"], rows),
          "", answer, "", f"![Methods against grouping]({_FILES.figures}/methods_against_grouping.png)", ""]


def _helper_lines(study_tables: workdir_lib.StudyTables, comparison: analysis.Comparison,
                  figure_dir: str) -> tuple[list[str], Optional[helper_lib.HelperGains]]:
  """The "Helper tasks" section and its numbers, when the run has helper tasks."""
  helpers = study_tables.helper_tasks
  if not helpers:
    return [], None
  lines = ["## Helper tasks", "",
           f"{', '.join(helpers)} {'is a helper' if len(helpers) == 1 else 'are helpers'} "
           "(`config.selection.helper_tasks`): trained as extra outputs of some networks, with equal weights like "
           "any task, never served; their losses enter no total above. A network with a helper is a candidate for "
           "its other tasks.", ""]
  measured = None
  if study_tables.val is not None and study_tables.test is not None:
    measured = helper_lib.gains(study_tables.val, study_tables.test,
                                None if study_tables.replicas is None else study_tables.replicas[1])
  if measured is None:
    lines += ["No served task has both a full-size single-task network and a full-size network with a helper "
              "(experiments/helper_tasks.py trains every served task with each helper).", ""]
  else:
    figures.helper_gains(measured, os.path.join(figure_dir, "helper_tasks.png"))
    intervals = measured.pair_intervals is not None

    def cell(value: float, bounds: Optional[tuple[np.ndarray, np.ndarray]], index) -> str:
      if not np.isfinite(value):
        return "-"
      if bounds is None:
        return f"{100 * value:+.1f}%"
      low, high = bounds[0][index], bounds[1][index]
      mark = "*" if low > 0 or high < 0 else ""
      return f"{100 * value:+.1f}%{mark} [{100 * low:+.1f}, {100 * high:+.1f}]"

    rows = [[task, _format(float(measured.single_loss[i]))]
            + [cell(measured.pair_gain[i, h], measured.pair_intervals, (i, h)) for h in range(len(measured.helpers))]
            + [measured.best[i], cell(measured.best_gain[i], measured.best_intervals, i)]
            for i, task in enumerate(measured.tasks)]
    lines += ["Per served task: its test loss in its 1-SNT single-task network, and how much lower it is in the "
              "1-SNT network shared with each helper and in its best network with a helper (lowest on validation), "
              f"from `{_FILES.table('test')}`"
              + (f"; mean over {measured.replicates} seeds with its 95% interval, * where it excludes zero." if intervals
                 else "."), ""]
    lines += _markdown_table(["task", "single-task loss"] + [f"+ {h}" for h in measured.helpers]
                             + ["best with a helper", "its gain"], rows)
    lines += ["", f"![Helper tasks]({_FILES.figures}/helper_tasks.png)", ""]
  chosen = helper_lib.chosen_with_helpers(comparison.runs, helpers)
  if chosen:
    lines += ["Networks with a helper that a selection chose:", ""]
    lines += [f"- {method}: " + "; ".join(f"{budget:g} SNT: {', '.join(labels)}" for budget, labels in entries)
              for method, entries in chosen.items()]
  else:
    lines += [f"No selection ({', '.join(comparison.runs) or 'none ran'}) chose a network with a helper at any "
              "budget."]
  return lines + [""], measured


def _tag_lines(tag: dict) -> list[str]:
  names = tag["tasks"]
  rows = [[source] + [f"{tag['affinity'][i][j]:+.4f}" for j in range(len(names))] for i, source in enumerate(names)]
  return (["## TAG inter-task affinity", "",
           f"Z(row -> column), averaged over {tag['measurements']} measurements every {tag['every_steps']} steps "
           f"while training {tag['network']} (`{_FILES.tag}`); positive: a step on the row task "
           "lowers the column task's loss.", ""]
          + _markdown_table(["source \\ target"] + list(names), rows) + [""])


def _ensemble_lines(ensemble: dict) -> list[str]:
  rows = []
  for entry in ensemble["budgets"]:
    for task, value in entry["tasks"].items():
      rows.append([f"{entry['budget']:g}", task, ", ".join(value["networks"]), f"{value['best_single_loss']:.4f}",
                   f"{value['ensemble_loss']:.4f}",
                   f"{100 * (1 - value['ensemble_loss'] / value['best_single_loss']):+.1f}%"])
  if not rows:
    return ["## Ensembling", "", f"No chosen networks share a task at any budget (`{_FILES.ensemble}`).", ""]
  return (["## Ensembling", "",
           f"Where several networks of the {ensemble['method']} selection solve a task, their predictions averaged "
           f"(`{_FILES.ensemble}`); gain against the best single network's test loss.", ""]
          + _markdown_table(["budget", "task", "networks", "best single", "ensemble", "gain"], rows) + [""])


def _transfer_lines(study_tables: workdir_lib.StudyTables, figure_dir: str,
                    multitask: Optional[tuple[np.ndarray, tuple[int, ...]]], transfer_csv: Optional[str]) -> list[str]:
  """Table 3 (transfer affinity, measured by the transfer phase and/or from a CSV) and Figure 3 (against
  Table 2's multi-task affinity, per replicate with its seeds); nothing when neither source exists."""
  task_names = list(study_tables.task_names)
  sources = []
  found = transfer_lib.measured(study_tables.transfer, study_tables.networks, task_names,
                                source=f"`{_FILES.transfer.methods}` against the single-task networks")
  if found is not None:
    sources.append(("measured (this run)", found))
  csv_path = study_tables.transfer_csv if transfer_csv is None else transfer_csv
  if csv_path:
    sources.append((f"from {os.path.basename(csv_path)}", transfer_lib.read_csv(csv_path).restricted_to(task_names)))
  if not sources:
    return []
  lines = ["## Table 3: transfer affinity", "",
           "Entry (row, column): for the measured matrix, how much lower the row task's test loss is with a "
           "decoder trained on the frozen encoder of the column task's single-task network than in the row "
           "task's own single-task network (full size; Taskonomy's transfer, `transfer.enabled`); negative: the "
           "column task's representation serves the row task worse than its own. Higher is better."]
  panels = []
  for label, affinity in sources:
    directed, symmetric = affinity.intervals(), affinity.intervals(symmetric=True)
    seeds = (f", mean over seeds {', '.join(map(str, affinity.seeds))} with 95% intervals; * where the interval "
             f"excludes zero" if directed is not None else "")
    lines += ["", f"### {label}", "", f"From {affinity.source}{seeds}.", ""]
    lines += _matrix_table(affinity.matrix, task_names, directed, corner="task \\ encoder of")
    lines += ["", "Symmetric (mean of both directions, as Table 2):", ""]
    lines += _matrix_table(affinity.symmetric().mean(axis=0), task_names, symmetric, corner="task \\ task")
    slug = "measured" if affinity is found else "csv"
    figures.heatmap(affinity.matrix, task_names, os.path.join(figure_dir, f"table3_transfer_{slug}.png"),
                    f"Table 3: transfer affinity, {label}\nrow task from the column task's encoder",
                    colorbar_label="% better than own network" if affinity is found else "affinity x 100")
    lines += ["", f"![Table 3, {label}]({_FILES.figures}/table3_transfer_{slug}.png)"]
    if multitask is not None:
      panels.append((label, transfer_lib.correlate(affinity, *multitask), affinity is found))
  lines += [""]
  if not panels:
    return lines + ["Figure 3 needs Table 2 (pair and half-size networks) to set the transfer affinity against.", ""]
  figures.transfer_against_multitask(panels, os.path.join(figure_dir, "figure3_transfer_vs_multitask.png"))
  lines += ["## Figure 3: transfer affinity against multi-task affinity", "",
            "Each point is a pair of tasks: its symmetric transfer affinity (Table 3) against its multi-task "
            f"affinity (Table 2). The paper found them anti-correlated: r = {transfer_lib.PAPER_R}, "
            f"p = {transfer_lib.PAPER_P} (Taskonomy's affinities against its Table 2).", ""]
  for label, correlation, _ in panels:
    text = (f"- {label}: Pearson r = {correlation.r:+.3f}, p = {correlation.p:.3g} over {len(correlation.pairs)} pairs"
            if np.isfinite(correlation.r) else
            f"- {label}: no correlation from {len(correlation.pairs)} pairs (needs {transfer_lib.MIN_PAIRS} or more)")
    if correlation.replicate_r is not None:
      text += (f"; per seed r = {', '.join(f'{v:+.2f}' for v in correlation.replicate_r)}"
               + ("" if correlation.r_interval is None else
                  f" (95% interval of their mean [{correlation.r_interval[0]:+.2f}, {correlation.r_interval[1]:+.2f}])"))
    lines.append(text + ".")
  return lines + ["", f"![Figure 3]({_FILES.figures}/figure3_transfer_vs_multitask.png)", ""]


def write_report(workdir: str, budgets: Optional[Sequence[float]] = None, random_samples: int = 1000,
                 seed: int = 0, study_tables: Optional[workdir_lib.StudyTables] = None,
                 comparison: Optional[analysis.Comparison] = None, transfer_csv: Optional[str] = None) -> str:
  """Writes the report and figures; returns the report's path.

  ``study_tables`` and ``comparison`` (``analysis.compare_methods``'s) are read and computed from
  ``workdir`` unless given (``tg_jax.finish`` has them already). ``transfer_csv``: transfer affinities
  from elsewhere (``reporting.transfer.read_csv``) instead of the run's ``config.transfer.affinity_csv``.
  """
  paths = workdir_lib.Workdir(workdir)
  study_tables = workdir_lib.load_study(paths) if study_tables is None else study_tables
  test = study_tables.test
  figure_dir = paths.figures
  os.makedirs(figure_dir, exist_ok=True)
  if comparison is None:
    comparison = analysis.compare_methods(study_tables, budgets, random_samples=random_samples, seed=seed)
  helped = f" Helper tasks (trained, never served): {', '.join(study_tables.helper_tasks)}." if study_tables.helper_tasks else ""
  lines = ["# Task grouping study", "",
           f"Tasks: {', '.join(study_tables.task_names)}.{helped} Losses: lower is better; totals sum over tasks. "
           f"Regenerate with `python -m tg_jax.report --workdir={workdir}`.", ""]
  lines += _sources(study_tables)
  lines += _regime_lines(paths, study_tables)
  robust_at = len(lines)  # "what is robust" goes here once the tables below are computed

  robust_pairs = None
  multitask = None  # Table 2 per replicate, for Figure 3
  try:
    if test is None:
      raise TableError("no converged networks yet")
    relative = analysis.pair_relative_performance(test)
  except TableError as error:
    lines += ["## Pairwise relationships", "", f"Not available: {error}", ""]
  else:
    multitask = analysis.multitask_affinity_replicates(test, None if study_tables.replicas is None
                                                       else study_tables.replicas[1])
    affinity = analysis.pair_affinity(relative)
    intervals = None if study_tables.replicas is None else analysis.pair_intervals(study_tables.replicas[1])
    figures.heatmap(relative, test.task_names, os.path.join(figure_dir, "table1_pairs.png"),
                    "Row task trained with column task (test)",
                    significant=None if intervals is None else _significant(intervals["relative"]))
    lines += ["## Table 1: each task trained with another, against its half-size single-task network (test)", "",
              "Entry (row, column): how much lower the row task's test loss is in the pair network with the "
              "column task than in the row task's half-size single-task network (positive: the column task "
              f"helps). From `{_FILES.table('test')}`."
              + ("" if intervals is None else " Mean over seeds, with its 95% interval over seeds; * where the "
                 "interval excludes zero (the heatmap greys the others out)."), ""]
    lines += _matrix_table(relative, test.task_names, None if intervals is None else intervals["relative"])
    lines += ["", f"![Table 1]({_FILES.figures}/table1_pairs.png)", "",
              "## Table 2: pairwise affinity (mean of both directions)", ""]
    lines += _matrix_table(affinity, test.task_names, None if intervals is None else intervals["affinity"]) + [""]
    robust_pairs = None if intervals is None else _significant(intervals["relative"])
  lines += _transfer_lines(study_tables, figure_dir, multitask, transfer_csv)

  size_matched = _size_matched(study_tables)
  lines += _figure2_lines(size_matched, figure_dir)
  budgets_used = comparison.budgets
  lines += ["## Table 4: total test loss per method and inference budget", "",
            "Selection uses validation losses (or their ESA / HOA / TAG predictions); every method is scored on "
            "test with the networks it chose, each task served by its best chosen network on validation "
            f"(`{_FILES.table('val')}`, `{_FILES.table('test')}`"
            + (f", `{_FILES.retrain.results}/*.csv`" if study_tables.retrained else "") + "). "
            "'-': the method has no answer within that budget.", ""]
  def total(name: str, i: int, value: Optional[float]) -> str:
    interval = comparison.intervals.get(name, [None] * len(budgets_used))[i]
    return _format(value, 3) + ("" if interval is None or value is None else
                                f" [{interval[0]:.3f}, {interval[1]:.3f}]")

  rows = [[name] + [total(name, i, v) for i, v in enumerate(losses)] for name, losses in comparison.methods.items()]
  if comparison.intervals:
    lines += ["Each total with its 95% interval over seeds (a selection's shifted for its winner's curse).", ""]
  lines += _markdown_table(["method"] + [f"{b:g}" for b in budgets_used], rows)
  lines += [""] + _table4_notes(comparison)
  unscored = analysis.untrained_choices(comparison.runs)
  if unscored:
    lines += ["", "Chosen but not trained to convergence yet (no test loss; `python -m tg_jax.main` with the same "
              "config trains them): " + ", ".join(f"{'+'.join(t)} @ {c:g} SNT" for t, c in unscored) + "."]
  figures.loss_against_budget(comparison, os.path.join(figure_dir, "figure4_loss_vs_budget.png"))
  lines += ["", f"![Figure 4]({_FILES.figures}/figure4_loss_vs_budget.png)", ""]

  # The grouping "What is robust" describes: the optimum where known, else the best-informed approximation.
  main_method = next(m for m in ("optimal", "hoa", "selected", "esa", "tag", *comparison.runs)
                     if m in comparison.runs)
  lines += _figure5_lines(comparison, figure_dir)
  lines += _groupings_lines(comparison)
  lines += _figure6_lines(study_tables, comparison, figure_dir)
  lines += _refinement_lines(study_tables, comparison)
  lines += _adaptive_lines(study_tables, comparison)
  lines += _compute_lines(study_tables, comparison)
  measured_regret = regret_lib.measure(study_tables, comparison)
  lines += _regret_lines(measured_regret, figure_dir)
  lines += _approximation_lines(study_tables)
  lines += _stand_in_lines(study_tables, comparison, figure_dir)
  helper_section, helper_gains = _helper_lines(study_tables, comparison, figure_dir)
  lines += helper_section
  if study_tables.tag is not None:
    lines += _tag_lines(study_tables.tag)
  if study_tables.ensemble is not None:
    lines += _ensemble_lines(study_tables.ensemble)
  if study_tables.runs:
    lines += _improvement_section(study_tables)
  lines[robust_at:robust_at] = _robust_lines(study_tables, comparison, main_method, robust_pairs)
  workdir_lib.write_json(paths.study, {"budgets": budgets_used, "methods": comparison.methods,
                                       "figure2": _size_matched_json(size_matched),
                                       "intervals": comparison.intervals,
                                       "probability_optimal": comparison.probability_optimal,
                                       "refinement": None if comparison.refinement is None
                                       else comparison.refinement.to_json(),
                                       "regret": None if measured_regret is None else measured_regret.to_json(),
                                       "helper_tasks": None if helper_gains is None else helper_gains.to_json()})
  path = paths.report
  temporary = f"{path}.tmp-{os.getpid()}"
  with open(temporary, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  os.replace(temporary, path)
  return path
