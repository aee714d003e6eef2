"""Writes ``WORKDIR/report.md`` and its figures from ``WORKDIR/results/{val,test,esa}.csv``.

Every number in the report is recomputed from those tables, so a report can always be regenerated
(``python -m tg_jax.report --workdir=DIR``) and traced back to them.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np

from tg_jax.reporting import analysis, figures
from tg_jax.selection import hoa, study, tables
from tg_jax.selection.tables import TableError

RESULTS_DIR = "results"
FIGURES_DIR = "figures"
REPORT_FILE = "report.md"
NETWORKS_FILE = "networks.json"  # the trainer's per-network record, with the constant predictor's losses


def _format(value: Optional[float], digits: int = 4) -> str:
  return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return lines


def _matrix_table(matrix: np.ndarray, labels: Sequence[str]) -> list[str]:
  rows = [[label] + ["" if not np.isfinite(v) else f"{100 * v:+.1f}%" for v in matrix[i]]
          for i, label in enumerate(labels)]
  return _markdown_table(["task \\ trained with"] + list(labels), rows)


def _not_beaten(networks_json: dict) -> list[tuple[str, str]]:
  return [(n["name"], t) for n in networks_json["networks"] if n["status"] == "trained"
          for t, v in n["improvement_over_constant"]["test"].items() if not v > 0]


def improvement_summary(networks_json: dict) -> str:
  """One line: does every trained network beat the constant predictor on each of its tasks?"""
  beaten = _not_beaten(networks_json)
  if not beaten:
    return "Every trained network beats the constant predictor on each of its tasks (test loss)."
  return "Not better than the constant predictor: " + ", ".join(f"{n} on {t}" for n, t in beaten) + "."


def _improvement_section(networks_json: dict) -> list[str]:
  """How much each network beats the constant predictor (the training mean) by, per task."""
  networks = networks_json["networks"]
  constant = networks_json["constant_predictor"]["test"]
  task_order = list(dict.fromkeys(t for n in networks for t in n["tasks"]))
  rows = []
  for network in networks:
    improvements = network["improvement_over_constant"]["test"]
    rows.append([network["name"], f"{network['cost']:.3f}", network["status"]] +
                ["" if improvements.get(t) is None else f"{100 * improvements[t]:+.1f}%" for t in task_order])
  return (["## Improvement over the constant predictor", "",
           "Test loss relative to predicting the training mean of each label (class frequencies for "
           "segmentation), 1 - loss / constant loss. Constant predictor's test losses: "
           + ", ".join(f"{t} {v:.4f}" for t, v in constant.items()) + ".", ""]
          + _markdown_table(["network", "cost", "status"] + task_order, rows)
          + ["", improvement_summary(networks_json), ""])


def load_tables(workdir: str) -> dict:
  """The workdir's results tables: val and test (required), esa (optional)."""
  loaded = {}
  for split in ("val", "test", "esa"):
    path = os.path.join(workdir, RESULTS_DIR, f"{split}.csv")
    if os.path.exists(path):
      loaded[split] = tables.read_csv(path)
  missing = [s for s in ("val", "test") if s not in loaded]
  if missing:
    raise TableError(f"{workdir!r} has no {' or '.join(f'{RESULTS_DIR}/{s}.csv' for s in missing)}; point --workdir "
                     f"at a workdir of python -m tg_jax.main (training writes them as it goes)")
  return loaded


def write_report(workdir: str, budgets: Optional[Sequence[float]] = None, random_samples: int = 1000,
                 seed: int = 0) -> str:
  """Writes the report and figures; returns the report's path."""
  loaded = load_tables(workdir)
  val, test, esa = loaded["val"], loaded["test"], loaded.get("esa")
  figure_dir = os.path.join(workdir, FIGURES_DIR)
  os.makedirs(figure_dir, exist_ok=True)
  comparison = analysis.compare_methods(val, test, esa, budgets, random_samples=random_samples, seed=seed)
  lines = ["# Task grouping study", "",
           f"Tasks: {', '.join(val.task_names)}. Networks: {val.num_networks} in `{RESULTS_DIR}/val.csv` "
           f"(validation) and `{RESULTS_DIR}/test.csv` (test)"
           + (f", early losses in `{RESULTS_DIR}/esa.csv`." if esa is not None else ".")
           + " Losses: lower is better; totals sum over tasks. Regenerate with "
           f"`python -m tg_jax.report --workdir={workdir}`.", ""]

  try:
    relative = analysis.pair_relative_performance(test)
  except TableError as error:
    lines += ["## Pairwise relationships", "", f"Not available: {error}", ""]
  else:
    affinity = analysis.pair_affinity(relative)
    figures.heatmap(relative, val.task_names, os.path.join(figure_dir, "table1_pairs.png"),
                    "Row task trained with column task (test)")
    lines += ["## Table 1: each task trained with another, against its half-size single-task network (test)", "",
              "Entry (row, column): how much lower the row task's test loss is in the pair network with the "
              "column task than in the row task's half-size single-task network (positive: the column task "
              "helps).", ""]
    lines += _matrix_table(relative, val.task_names)
    lines += ["", f"![Table 1]({FIGURES_DIR}/table1_pairs.png)", "",
              "## Table 2: pairwise affinity (mean of both directions)", ""]
    lines += _matrix_table(affinity, val.task_names) + [""]

  budgets_used = comparison["budgets"]
  lines += ["## Table 4: total test loss per method and inference budget", "",
            "Selection uses validation losses (or their ESA / HOA predictions); every method is scored on test "
            "with the networks it chose, each task served by its best chosen network on validation.", ""]
  rows = [[name] + [_format(v, 3) for v in losses] for name, losses in comparison["methods"].items()]
  lines += _markdown_table(["method"] + [f"{b:g}" for b in budgets_used], rows)
  figures.loss_against_budget(comparison, os.path.join(figure_dir, "figure4_loss_vs_budget.png"))
  lines += ["", f"![Figure 4]({FIGURES_DIR}/figure4_loss_vs_budget.png)", ""]

  main_method = next(iter(comparison["runs"]))
  main_result = comparison["runs"][main_method]
  figures.groupings(main_result, os.path.join(figure_dir, "figure5_groupings.png"))
  lines += [f"## Figure 5: the {main_method} grouping at each budget", "",
            "Networks (large: full size, small: half size) joined to the tasks they serve; grey: decoders a "
            "network has but does not use.", "", f"![Figure 5]({FIGURES_DIR}/figure5_groupings.png)", "",
            "```", study.format_text(main_result), "```", ""]

  lines += ["## How good are the approximations", ""]
  accuracy = hoa.accuracy(val)
  if accuracy is None:
    lines.append("- HOA prediction error: no measured groups of 3+ tasks to compare with (pairs only).")
  else:
    lines.append(f"- HOA prediction error over {accuracy.count} measured higher-order losses: average max-ratio "
                 f"error {100 * accuracy.max_ratio_error:.1f}%, average overestimate "
                 f"{100 * accuracy.overestimate:.1f}% (paper: 5.2% and 1.4%).")
  if esa is not None:
    correlation = analysis.esa_correlation(val, esa)
    per_task = ", ".join(f"{t} {r:.2f}" for t, r in correlation.per_task.items())
    lines.append(f"- ESA: Pearson r between early and final validation losses {correlation.pooled:.2f} over "
                 f"{correlation.count} (network, task) losses relative to each task's single-task network "
                 f"(paper: 0.49); within each task: {per_task}.")
  lines.append("")
  networks_path = os.path.join(workdir, RESULTS_DIR, NETWORKS_FILE)
  if os.path.exists(networks_path):
    with open(networks_path, encoding="utf-8") as f:
      lines += _improvement_section(json.load(f))
  with open(os.path.join(workdir, "study.json"), "w", encoding="utf-8") as f:
    json.dump({"budgets": budgets_used, "methods": comparison["methods"]}, f, indent=2)
  path = os.path.join(workdir, REPORT_FILE)
  temporary = f"{path}.tmp-{os.getpid()}"
  with open(temporary, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  os.replace(temporary, path)
  return path
