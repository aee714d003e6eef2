"""After training: the selection on the results tables, and the study report.

Reads the workdir's files (``results/*.csv``, ``networks.json``, the retraining phase's tables under
``retrain/``; see ``tg_jax.reporting.report.load_study``), so it runs the same after one run, after
``tg_jax.merge`` joined the shards of an array job, or on a copied workdir.

Writes ``WORKDIR/selection.json`` (the selection ``config.selection.predict`` names, with the
baselines), ``WORKDIR/ensemble.json`` when ``config.evaluation.ensemble`` asks for it, and the study
report (``tg_jax.reporting.report``: ``WORKDIR/report.md`` and ``WORKDIR/figures/``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import ml_collections

from tg_jax.reporting import analysis
from tg_jax.reporting import report
from tg_jax.selection import study
from tg_jax.selection.tables import TableError
from tg_jax.training import results

SELECTION_FILE = "selection.json"
# config.selection.predict -> the report's name of that selection.
METHOD_OF_PREDICTION = {"none": "optimal", "hoa": "hoa", "esa": "esa"}


def select(workdir: str, predict: str, random_samples: int = 1000) -> dict[str, Any]:
  """The selection that ``predict`` names on the workdir's tables, scored on test, with the baselines.

  ``"none"``: on the converged validation losses of the networks as trained (all subsets: the
  optimum). ``"hoa"``: on the Higher Order Approximation from the pair networks. ``"esa"``: on the
  early-stopping-approximation table. Chosen networks are looked up among the converged ones (the
  main run's, or the retraining phase's; see ``tg_jax.training.retrain``).
  """
  if predict not in METHOD_OF_PREDICTION:
    raise ValueError(f"unknown selection.predict {predict!r}; choose one of {', '.join(METHOD_OF_PREDICTION)}")
  if not os.path.exists(os.path.join(workdir, results.RESULTS_DIR, "val.csv")):
    raise FileNotFoundError(f"no {results.RESULTS_DIR}/val.csv in {workdir}; train (or merge the shards) first")
  study_tables = report.load_study(workdir)
  comparison = analysis.compare_methods(study_tables, random_samples=random_samples)
  method = METHOD_OF_PREDICTION[predict]
  if predict == "none" and method not in comparison["runs"]:
    method = "selected"  # not every subset was trained: the best selection among those that were
  if method in comparison["runs"]:
    selection = dict(comparison["runs"][method])
  else:
    raise TableError(f"selection.predict={predict!r} needs tables {workdir} does not have: "
                     + {"hoa": "every pair network trained to convergence (experiments/pairs.py)",
                        "esa": f"{results.RESULTS_DIR}/esa.csv", "none": "converged networks"}[predict])
  selection["method"] = method
  selection["baselines"] = comparison["baselines"] or {}
  return selection


def _ensembles(config: ml_collections.ConfigDict, workdir: str, selection: dict) -> dict[str, Any]:
  """Ensembling gains at each budget whose chosen networks are all the main run's (``tasks``: those
  that 2+ of them solve; none for a single network)."""
  from tg_jax.training import ensemble  # pylint: disable=g-import-not-at-top  (loads checkpoints: jax)
  with open(os.path.join(workdir, results.RESULTS_DIR, "networks.json"), encoding="utf-8") as f:
    records = json.load(f)["networks"]
  trained_here = {r["name"] for r in records}
  entries = []
  # Budgets often choose the same networks; each set's checkpoints and test pass are needed once.
  evaluated: dict[tuple[str, ...], dict] = {}
  for solution in selection["solutions"]:
    if solution.get("infeasible") or solution.get("untrained"):
      continue
    names = analysis.network_names([(n["tasks"], n["cost"]) for n in solution["networks"]], records,
                                   selection["tasks"])
    # Retrained networks live in another workdir's checkpoint; ensembles use the main run's.
    if not set(names) <= trained_here:
      continue
    key = tuple(sorted(names))
    if len(names) >= 2 and key not in evaluated:
      evaluated[key] = ensemble.evaluate(config, workdir, names, split="test")
    per_task = evaluated.get(key, {})
    entries.append({"budget": solution["budget"], "networks": names, "tasks": per_task})
  return {"method": selection["method"], "split": "test", "budgets": entries}


def write(workdir: str, predict: str, config: Optional[ml_collections.ConfigDict] = None) -> str:
  """Selection, ensembling (if ``config.evaluation.ensemble``) and the study report for ``workdir``;
  returns the text to print."""
  selection = select(workdir, predict)
  results.write_json(os.path.join(workdir, SELECTION_FILE), selection)
  evaluation = config.get("evaluation") if config is not None else None
  if evaluation is not None and evaluation.get("ensemble", False):
    results.write_json(os.path.join(workdir, report.ENSEMBLE_FILE), _ensembles(config, workdir, selection))
  report_path = report.write_report(workdir)
  with open(os.path.join(workdir, results.RESULTS_DIR, "networks.json")) as f:
    networks_json = json.load(f)
  return "\n".join([study.format_text(selection).rstrip(), "",
                    report.improvement_summary(networks_json), f"Report: {report_path}"])
