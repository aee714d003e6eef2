"""After training: the selection on the results tables, and a short report.

Reads only files (``WORKDIR/results/*.csv`` and ``networks.json``), so it runs the same after one
run, after ``tg_jax.merge`` joined the shards of an array job, or on a copied workdir.

Writes ``WORKDIR/selection.json`` (``tg_jax.selection.study.run``'s result) and the study report
(``tg_jax.reporting.report``: ``WORKDIR/report.md`` and ``WORKDIR/figures/``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from tg_jax.reporting import report
from tg_jax.selection import study
from tg_jax.selection import tables
from tg_jax.training import results

SELECTION_FILE = "selection.json"


def _table(workdir: str, name: str) -> Optional[tables.ResultsTable]:
  path = os.path.join(workdir, results.RESULTS_DIR, name)
  return tables.read_csv(path) if os.path.exists(path) else None


def select(workdir: str, predict: str) -> dict[str, Any]:
  """Runs the selection that ``predict`` names on the workdir's tables.

  ``"hoa"``: on the Higher Order Approximation from the pair networks' validation losses.
  ``"esa"``: on the early-stopping-approximation table, assigning tasks by validation losses.
  ``"none"``: on the validation losses of the networks as trained (all subsets: the optimum).
  """
  val, test = _table(workdir, "val.csv"), _table(workdir, "test.csv")
  if val is None:
    raise FileNotFoundError(f"no {results.RESULTS_DIR}/val.csv in {workdir}; train (or merge the shards) first")
  if predict == "esa":
    esa = _table(workdir, "esa.csv")
    if esa is None:
      raise FileNotFoundError(f"no {results.RESULTS_DIR}/esa.csv in {workdir}")
    return study.run(esa, test, predict="none", converged=val.aligned_to(esa, "validation table"))
  return study.run(val, test, predict=predict)


def write(workdir: str, predict: str) -> str:
  """Selection and the study report for ``workdir``; returns the text to print."""
  selection = select(workdir, predict)
  results.write_json(os.path.join(workdir, SELECTION_FILE), selection)
  report_path = report.write_report(workdir)
  with open(os.path.join(workdir, results.RESULTS_DIR, "networks.json")) as f:
    networks_json = json.load(f)
  return "\n".join([study.format_text(selection).rstrip(), "",
                    report.improvement_summary(networks_json), f"Report: {report_path}"])
