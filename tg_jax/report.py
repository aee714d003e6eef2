"""Regenerates a workdir's study report: ``python -m tg_jax.report --workdir=DIR``."""

import sys

from absl import app, flags

from tg_jax import console
from tg_jax.reporting import report
from tg_jax.selection import selector, tables

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of python -m tg_jax.main (holds results/*.csv).")
_BUDGETS = flags.DEFINE_list("budgets", None, "Budgets in SNT (default 1 to #tasks in steps of 0.5).")
_RANDOM_SAMPLES = flags.DEFINE_integer("random_samples", 1000, "Random valid solutions for the baseline.")
_TRANSFER_AFFINITY = flags.DEFINE_string(
    "transfer_affinity", None, "CSV of transfer affinities from elsewhere (e.g. Taskonomy's; format in "
    "tg_jax/reporting/transfer.py) for Table 3 and Figure 3; default: the run's config.transfer.affinity_csv.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  console.quiet_libraries()
  try:
    budgets = [float(b) for b in _BUDGETS.value] if _BUDGETS.value else None
    path = report.write_report(_WORKDIR.value, budgets, random_samples=_RANDOM_SAMPLES.value,
                               transfer_csv=_TRANSFER_AFFINITY.value)
  except (tables.TableError, selector.NoFeasibleSolution, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
