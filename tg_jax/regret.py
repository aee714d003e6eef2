r"""Regret against training compute from results tables alone; no training, no JAX.

  # The paper's setting 1 (the authors' tab-separated tables; ESA at 20% of a training):
  python -m tg_jax.regret --format=standley --results=setting1_val.tsv --test_results=setting1_test.tsv \
      --esa_results=setting1_esa.tsv --out=regret/

  # A workdir's tables (its report has the same section, with network-steps from its schedule):
  python -m tg_jax.regret --results=WORKDIR/results/val.csv --test_results=WORKDIR/results/test.csv \
      --esa_results=WORKDIR/results/esa.csv --affinities=WORKDIR/results/tag.json --out=regret/

``--helper_tasks=edges3d,...``: tasks trained only to help the others, never served
(``ResultsTable.with_helpers``; ``tg_jax.select`` takes the same flag).

Writes ``regret.md`` (the table), ``regret.json`` and ``regret_vs_compute.png`` under ``--out``.
The tables must hold every candidate network converged, so that Optimal is known (``tg_jax.reporting.regret``).
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from tg_jax import console
from tg_jax import workdir as workdir_lib
from tg_jax.reporting import analysis
from tg_jax.reporting import regret as regret_lib
from tg_jax.selection import tables

_RESULTS = flags.DEFINE_string("results", None, "Validation losses of every candidate network, trained to convergence.")
_TEST_RESULTS = flags.DEFINE_string("test_results", None, "Test losses of the same networks.")
_ESA_RESULTS = flags.DEFINE_string("esa_results", None, "Early (ESA) validation losses of the same networks.")
_AFFINITIES = flags.DEFINE_string("affinities", None, "TAG's measurements (WORKDIR/results/tag.json).")
_FORMAT = flags.DEFINE_enum("format", "csv", list(tables.READERS), "Table format: csv or standley.")
_TASK_NAMES = flags.DEFINE_list("task_names", None, "Column names for --format=standley (default s,d,n,k,e).")
_BUDGETS = flags.DEFINE_list("budgets", None, "Inference budgets in SNT (default 1 to #tasks in steps of 0.5).")
_ESA_FRACTION = flags.DEFINE_float("esa_fraction", analysis.PAPER_ESA_FRACTION,
                                   "The share of a training behind the ESA table (the paper's: 0.2).")
_HELPER_TASKS = flags.DEFINE_list("helper_tasks", None, "Tasks of the tables trained only to help the others, never "
                                  "served (their columns dropped; a network with one is a candidate for its others).")
_OUT = flags.DEFINE_string("out", None, "Directory for regret.md, regret.json and regret_vs_compute.png.")


def _read(path: str) -> tables.ResultsTable:
  if _FORMAT.value == "csv" and _TASK_NAMES.value:
    raise console.UsageError("task names come from the CSV header; --task_names is only for --format=standley")
  table = tables.read(path, _FORMAT.value, _TASK_NAMES.value)
  helpers = _HELPER_TASKS.value or ()
  console.check_helper_tasks(helpers, table.task_names, path)
  return table.with_helpers(helpers) if helpers else table


def run_command() -> str:
  """Runs the command from parsed flags; returns the text to print."""
  if not (_RESULTS.value and _TEST_RESULTS.value and _OUT.value):
    raise console.UsageError("--results, --test_results and --out are required, e.g. --results=val.csv "
                     "--test_results=test.csv --out=regret/")
  if not 0 < _ESA_FRACTION.value <= 1:
    raise console.UsageError(f"--esa_fraction is a share of one training, in (0, 1]; got {_ESA_FRACTION.value}")
  val = _read(_RESULTS.value)
  test = _read(_TEST_RESULTS.value).aligned_to(val)
  esa = _read(_ESA_RESULTS.value).with_task_order(val.task_names, "ESA table") if _ESA_RESULTS.value else None
  tag = None
  if _AFFINITIES.value:
    tag = workdir_lib.read_json(_AFFINITIES.value)
    if tag is None:
      raise console.UsageError(f"--affinities={_AFFINITIES.value} does not exist; point it at WORKDIR/results/tag.json")
  try:
    budgets = None if not _BUDGETS.value else [float(b) for b in _BUDGETS.value]
  except ValueError:
    raise console.UsageError(f"--budgets: {','.join(_BUDGETS.value)!r} is not a list of numbers, e.g. --budgets=1,1.5,2") from None
  study_tables = workdir_lib.StudyTables(val=val, test=test, esa=esa, tag=tag)
  runs = analysis.selections(study_tables, budgets, bootstrap=0)
  if "optimal" not in runs:
    raise console.UsageError(f"--results={_RESULTS.value} does not hold every group of tasks at full size, so Optimal (and "
                     "with it the regret) is unknown; train every subset (experiments/study.py)")
  budgets = list(runs["optimal"].budgets)
  comparison = analysis.Comparison(budgets, {name: [s.test_loss for s in run.solutions] for name, run in runs.items()},
                                   runs)
  measured = regret_lib.measure(study_tables, comparison, esa_fraction=_ESA_FRACTION.value)
  os.makedirs(_OUT.value, exist_ok=True)
  lines = ["# Regret against training compute", ""] + regret_lib.text_lines(measured)
  lines += ["![Regret against compute](regret_vs_compute.png)", ""]
  regret_lib.figure(measured, os.path.join(_OUT.value, "regret_vs_compute.png"))
  workdir_lib.write_atomic(os.path.join(_OUT.value, "regret.md"), "\n".join(lines))
  workdir_lib.write_atomic(os.path.join(_OUT.value, "regret.json"), json.dumps(measured.to_json(), indent=2))
  return "\n".join(regret_lib.table_lines(measured)) + f"\n\nwrote {_OUT.value}/regret.md, regret.json, regret_vs_compute.png"


main = console.table_command_main(run_command)


if __name__ == "__main__":
  app.run(main)
