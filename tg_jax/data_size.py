r"""Multi-task against single-task learning as the training set grows, from one workdir per size.

  python -m tg_jax.data_size --workdirs=workdirs/data_size/250,workdirs/data_size/500,... \
      --out=workdirs/data_size

Each workdir is a run of ``experiments/data_size.py`` at one ``--config.data.num_train_scenes``.
Writes ``data_size.md`` (per size and task, the all-task network's and the pairs' gain over the
single-task network, with intervals over seeds), ``data_size.json`` and ``data_size.png`` under
``--out``. Reads only the workdirs' files (numpy; no training, no JAX).
"""

from __future__ import annotations

from absl import app, flags

from tg_jax import console
from tg_jax.reporting import data_size

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Workdirs of experiments/data_size.py, one per training-set size.")
_OUT = flags.DEFINE_string("out", None, "Directory for data_size.md, data_size.json and data_size.png.")


def run_command() -> str:
  """Runs the command from parsed flags; returns the text to print."""
  if not _WORKDIRS.value or not _OUT.value:
    raise console.UsageError("--workdirs and --out are required, e.g. --workdirs=workdirs/data_size/500,"
                             "workdirs/data_size/2000 --out=workdirs/data_size")
  path = data_size.write(_WORKDIRS.value, _OUT.value)
  with open(path, encoding="utf-8") as f:
    return f.read() + f"\nwrote {path}"


main = console.table_command_main(run_command)


if __name__ == "__main__":
  app.run(main)
