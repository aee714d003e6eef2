"""After training: the selection on the results tables, and a short report.

Reads only files (``WORKDIR/results/*.csv`` and ``networks.json``), so it runs the same after one
run, after ``tg_jax.merge`` joined the shards of an array job, or on a copied workdir.

Writes ``WORKDIR/selection.json`` (``tg_jax.selection.study.run``'s result) and ``WORKDIR/report.md``
(the selection in words, and how much each network beats the constant predictor by).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from tg_jax.selection import study
from tg_jax.selection import tables
from tg_jax.training import results

SELECTION_FILE = "selection.json"
REPORT_FILE = "report.md"


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


def _improvement_lines(networks_json: dict[str, Any]) -> list[str]:
  report = networks_json["networks"]
  task_order = list(dict.fromkeys(t for n in report for t in n["tasks"]))
  lines = ["| network | cost | status | " + " | ".join(task_order) + " |",
           "|---|---|---|" + "---|" * len(task_order)]
  for network in report:
    cells = []
    for task in task_order:
      improvement = network["improvement_over_constant"]["test"].get(task)
      cells.append("" if improvement is None else f"{100 * improvement:+.1f}%")
    lines.append(f"| {network['name']} | {network['cost']:.3f} | {network['status']} | " + " | ".join(cells) + " |")
  beaten = [(n["name"], t) for n in report if n["status"] == "trained"
            for t, v in n["improvement_over_constant"]["test"].items() if not v > 0]
  lines.append("")
  lines.append("Every trained network beats the constant predictor on each of its tasks." if not beaten else
               "Not better than the constant predictor: " + ", ".join(f"{n} on {t}" for n, t in beaten) + ".")
  return lines


def write(workdir: str, predict: str) -> str:
  """Selection and report for ``workdir``; returns the report's text."""
  selection = select(workdir, predict)
  results.write_json(os.path.join(workdir, SELECTION_FILE), selection)
  with open(os.path.join(workdir, results.RESULTS_DIR, "networks.json")) as f:
    networks_json = json.load(f)
  constant = networks_json["constant_predictor"]
  text = "\n".join([
      "# Results", "",
      "## Selection", "", "```", study.format_text(selection).rstrip(), "```", "",
      "## Improvement over the constant predictor (test loss, 1 - loss / constant loss)", "",
      "The constant predictor outputs the training mean of each label (class frequencies for "
      "segmentation); its test losses: " + ", ".join(f"{t} {v:.4f}" for t, v in constant["test"].items()) + ".", "",
      *_improvement_lines(networks_json), ""])
  temporary = os.path.join(workdir, REPORT_FILE + ".tmp")
  with open(temporary, "w") as f:
    f.write(text)
  os.replace(temporary, os.path.join(workdir, REPORT_FILE))
  return text
