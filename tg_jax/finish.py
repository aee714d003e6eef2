"""After training: the retraining phase, the selection, ensembles and the report.

One sequence for ``tg_jax.main`` (after a run) and ``tg_jax.merge`` (after an array job's shards):

1. The selections every method makes from the workdir's tables (``reporting.analysis.selections``).
2. The paper's second phase: networks that ESA, HOA or TAG chose from predictions but that were not
   trained to convergence are trained in ``WORKDIR/retrain`` (``training.retrain``); a preempted
   phase resumes when the same command is run again.
3. The comparison of every method with the baselines, computed once and handed to both the
   selection (``selection.json``) and the report (``report.md``, ``figures/``).
4. Ensembles of the chosen networks that share a task (``ensemble.json``), when the config asks.
5. The adaptive loop (``config.selection.adaptive.trainings``; ``training.adaptive``), after the
   retraining phase: ``adaptive.json``.
6. Figure 6's predictions (``predictions.npz``): each method's networks chosen at
   ``analysis.QUALITATIVE_BUDGET`` on a few test images, from the checkpoints (``training.predictions``).

With ``config.transfer.enabled``, before 1: the transfer phase (``training.transfer``) in
``WORKDIR/transfer``, for the report's Table 3 and Figure 3.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

from absl import logging
import jax
import ml_collections

from tg_jax import records
from tg_jax import workdir as workdir_lib
from tg_jax.reporting import analysis
from tg_jax.reporting import report
from tg_jax.selection import predictors, study
from tg_jax.selection.tables import TableError
from tg_jax.training import adaptive
from tg_jax.training import networks as networks_lib
from tg_jax.training import retrain
from tg_jax.training import trainer
from tg_jax.training import transfer

EXIT_PREEMPTED = 128 + 15  # what a process killed by SIGTERM reports; launch scripts requeue on it
# config.selection.predict -> the comparison's name of that selection.
METHOD_OF_PREDICTION = {"none": "optimal", "esa": "esa", **{name: name for name in predictors.NAMES}}


def missing_networks(study_tables: workdir_lib.StudyTables, runs: dict[str, study.Selection]) -> list[str]:
  """Names of the networks ESA, HOA or TAG chose at some budget that have no converged results."""
  return study_tables.names_of(analysis.untrained_choices(runs))


def selection_of(comparison: analysis.Comparison, predict: str, workdir: workdir_lib.Workdir) -> study.Selection:
  """The selection that ``config.selection.predict`` names, scored on test, with the baselines.

  ``"none"``: on the converged validation losses of the networks as trained (all subsets: the
  optimum; otherwise the best among those trained). ``"hoa"``: on the Higher Order Approximation
  from the pair networks. ``"esa"``: on the early-stopping-approximation table. ``"surrogate"``,
  ``"tag"``, ``"tag_cosine"``: on those predictors' tables (``tg_jax.selection.predictors``).
  """
  method = METHOD_OF_PREDICTION[predict]
  if predict == "none" and method not in comparison.runs:
    method = "selected"  # not every subset was trained: the best selection among those that were
  if method not in comparison.runs:
    raise TableError(f"selection.predict={predict!r} needs tables {workdir.path} does not have: "
                     + {"hoa": "every pair network trained to convergence (experiments/pairs.py)",
                        "surrogate": "a full-size network trained to convergence on every task",
                        "tag": f"{workdir.relative(workdir.tag)} (config.tag.enabled)",
                        "tag_cosine": f"gradient cosines in {workdir.relative(workdir.tag)} (config.tag.enabled)",
                        "esa": workdir.relative(workdir.table("esa")), "none": "converged networks"}[predict])
  return dataclasses.replace(comparison.runs[method], baselines=comparison.baselines or {})


def _ensembles(config: ml_collections.ConfigDict, workdir: workdir_lib.Workdir,
               study_tables: workdir_lib.StudyTables, selection: study.Selection) -> dict[str, Any]:
  """Ensembling gains at each budget whose chosen networks are all the main run's (``tasks``: those
  that 2+ of them solve; none for a single network)."""
  from tg_jax.training import ensemble  # pylint: disable=g-import-not-at-top  (loads checkpoints: compiles)
  trained_here = {n.name for n in study_tables.runs[0].networks}
  entries = []
  # Budgets often choose the same networks; each set's checkpoints and test pass are needed once. A
  # finished workdir's ensemble.json already holds sets measured from the same checkpoints.
  evaluated: dict[tuple[str, ...], dict] = {
      tuple(sorted(entry["networks"])): entry["tasks"]
      for entry in (workdir_lib.read_json(workdir.ensemble) or {}).get("budgets", [])
      if len(entry.get("networks", ())) >= 2}
  for solution in selection.solutions:
    if solution.infeasible or solution.untrained:
      continue
    names = study_tables.names_of([(n.tasks, n.cost) for n in solution.networks])
    # Retrained networks live in another workdir's checkpoint; ensembles use the main run's.
    if not set(names) <= trained_here:
      continue
    key = tuple(sorted(names))
    if len(names) >= 2 and key not in evaluated:
      evaluated[key] = ensemble.evaluate(config, workdir.path, names, split="test")
    entries.append({"budget": solution.budget, "networks": names, "tasks": evaluated.get(key, {})})
  return {"method": selection.method, "split": "test", "budgets": entries}


def _has_checkpoints(paths: workdir_lib.Workdir) -> bool:
  return any(os.path.isdir(d.checkpoints) for d in [paths] + paths.shards())


def _predictions(config: ml_collections.ConfigDict, paths: workdir_lib.Workdir, study_tables: workdir_lib.StudyTables,
                 comparison: analysis.Comparison) -> Optional[workdir_lib.Predictions]:
  """Figure 6's predictions, written to ``predictions.npz`` (kept when it already holds the same
  networks at the same budget); None without checkpoints to compute them from (tables from other
  code)."""
  budget, named = analysis.serving_networks(study_tables, comparison)
  existing = study_tables.predictions
  if existing is not None and existing.budget == budget and existing.serving() == named:
    return existing
  if not named or not _has_checkpoints(paths):
    return None
  from tg_jax.training import predictions  # pylint: disable=g-import-not-at-top  (loads checkpoints: compiles)
  sources = [(config, paths.path)]
  if study_tables.retrained:
    sources.append((retrain.derived_config(config, list(study_tables.retrained)), paths.retrain.path))
  for index, keys in enumerate(study_tables.refined, start=1):
    sources.append((retrain.derived_config(config, study_tables.names_of(keys)), paths.refine_round(index).path))
  result = predictions.predict(config, sources, named, budget)
  paths.write_predictions(result)
  return result


def _refine(config: ml_collections.ConfigDict, paths: workdir_lib.Workdir, study_tables: workdir_lib.StudyTables,
            train: retrain.Train) -> Optional[workdir_lib.StudyTables]:
  """ESA's refinement loop (``selection.refine``): trains each round's new choice in
  ``WORKDIR/refine/round_<k>`` until the choice is stable or the rounds run out; returns the tables
  with every round's networks, or None when a round was preempted (the same command resumes it)."""
  study_tables = dataclasses.replace(study_tables, refine=config.selection.refine)
  while (refined := analysis.refinement(study_tables)) is not None and refined.pending:
    index = len(study_tables.refined) + 1
    names = study_tables.names_of(refined.pending)
    logging.info("ESA refinement round %d: training %d network(s) its new choice needs: %s", index, len(names),
                 ", ".join(names))
    outcome = train(retrain.derived_config(config, names), paths.refine_round(index).path)
    if outcome["status"] == trainer.STATUS_PREEMPTED:
      logging.warning("ESA refinement round %d was preempted; run the same command again to resume it", index)
      return None
    study_tables = dataclasses.replace(workdir_lib.load_study(paths), refine=config.selection.refine)
    if len(study_tables.refined) < index:
      raise workdir_lib.WorkdirError(f"ESA refinement round {index} ended without "
                                     f"{paths.refine_round(index).relative(paths.refine_round(index).networks)} in "
                                     f"{paths.refine_round(index).path}; rerun the same command to train it again")
  return study_tables


def _transfer_phase(config: ml_collections.ConfigDict, paths: workdir_lib.Workdir,
                    study_tables: workdir_lib.StudyTables, train: retrain.Train) -> bool:
  """Trains the transfer networks (``training.transfer``) in ``WORKDIR/transfer``; False when the phase
  was preempted (the same command resumes it)."""
  trained = {n.name for run in study_tables.runs[:1] for n in run.networks}
  sources = [records.Network((task,), records.FULL_SIZE, seed=seed).name
             for seed in networks_lib.seeds(config) for task in config.tasks]
  missing = [name for name in sources if name not in trained]
  if missing:
    raise workdir_lib.WorkdirError(f"transfer.enabled needs every task's full-size single-task network from the "
                                   f"main run as a frozen encoder; {paths.path} has none of {', '.join(missing)} "
                                   f"(train them with networks.subsets 'singles', 'pairs' or 'all')")
  derived = transfer.derived_config(config)
  logging.info("transfer phase: %d network(s), each a decoder on a frozen single-task encoder",
               len(derived.networks.extra))
  outcome = train(derived, paths.transfer.path)
  if outcome["status"] == trainer.STATUS_PREEMPTED:
    logging.warning("the transfer phase was preempted; run the same command again to resume it")
    return False
  return True


def finish(config: ml_collections.ConfigDict, workdir: str, train: retrain.Train = trainer.train_and_evaluate,
           random_samples: int = 1000) -> Optional[str]:
  """Retrains, selects, ensembles and reports for ``workdir``; returns the text to print, or None
  when the retraining phase was preempted (run the same command again to resume)."""
  predict = config.selection.predict
  if predict not in METHOD_OF_PREDICTION:
    raise ValueError(f"unknown selection.predict {predict!r}; choose one of {', '.join(METHOD_OF_PREDICTION)}")
  paths = workdir_lib.Workdir(workdir)
  with workdir_lib.locked(paths, enabled=jax.process_index() == 0):
    return _finish(config, paths, predict, train, random_samples)


def _finish(config: ml_collections.ConfigDict, paths: workdir_lib.Workdir, predict: str, train: retrain.Train,
            random_samples: int) -> Optional[str]:
  study_tables = workdir_lib.load_study(paths)
  if config.get("transfer") is not None and config.transfer.enabled:
    if not _transfer_phase(config, paths, study_tables, train):
      return None
    study_tables = workdir_lib.load_study(paths)
  runs = analysis.selections(study_tables)
  names = missing_networks(study_tables, runs)
  if names:
    logging.info("retraining phase: %d network(s) chosen from predictions lack converged results: %s",
                 len(names), ", ".join(names))
    outcome = train(retrain.derived_config(config, names), paths.retrain.path)
    if outcome["status"] == trainer.STATUS_PREEMPTED:
      logging.warning("the retraining phase was preempted; run the same command again to resume it")
      return None
    study_tables = workdir_lib.load_study(paths)
    runs = analysis.selections(study_tables)
  if config.selection.refine:
    study_tables = _refine(config, paths, study_tables, train)
    if study_tables is None:
      return None
    runs = analysis.selections(study_tables)
  adaptive_text = ""
  if config.selection.get("adaptive") is not None and config.selection.adaptive.trainings:
    try:
      looped = adaptive.run(config, paths, study_tables, train)
    except adaptive.Preempted as error:
      logging.warning("%s", error)
      return None
    adaptive_text = (f"Adaptive loop: {looped['counted']}, {looped['trainings']:g} trainings; its selection in "
                     f"{paths.adaptive}")
    study_tables = dataclasses.replace(study_tables, adaptive=looped)
  if jax.process_index() != 0:
    return ""
  comparison = analysis.compare_methods(study_tables, runs=runs, random_samples=random_samples)
  selection = selection_of(comparison, predict, paths)
  workdir_lib.write_json(paths.selection, selection.to_json())
  if config.get("evaluation") is not None and config.evaluation.get("ensemble", False):
    ensembles = _ensembles(config, paths, study_tables, selection)
    workdir_lib.write_json(paths.ensemble, ensembles)
    study_tables = dataclasses.replace(study_tables, ensemble=ensembles)
    analysis.add_ensemble_rows(comparison, study_tables)
  study_tables = dataclasses.replace(study_tables, predictions=_predictions(config, paths, study_tables, comparison))
  report_path = report.write_report(paths.path, study_tables=study_tables, comparison=comparison)
  return "\n".join([study.format_text(selection).rstrip(), "",
                    report.improvement_summary(study_tables.networks), f"Report: {report_path}",
                    f"Results in {paths.results}; selection in {paths.selection}"] + ([adaptive_text] if adaptive_text else []))
