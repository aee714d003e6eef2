r"""Trains an experiment's networks, then selects which to use under each inference budget.

  python -m tg_jax.main --config=experiments/pairs.py --workdir=workdirs/pairs
  python -m tg_jax.main --config=experiments/pairs.py:full --workdir=/scratch/pairs   # GPUs
  python -m tg_jax.main --config=experiments/study.py --workdir=workdirs/study        # the whole study

After the main run, networks that ESA, HOA or TAG chose from predictions but that were not trained
to convergence are trained in ``WORKDIR/retrain`` (the paper's second phase, ``training.retrain``);
then the selection (``selection.json``) and the report (``report.md``, ``figures/``) are written.

Compiled programs and measured network costs are cached in ``~/.cache/tg_jax`` (``tg_jax.cache``;
``TG_JAX_CACHE_DIR=DIR`` moves it, ``TG_JAX_CACHE_DIR=`` turns it off), so a second run starts training
sooner, with the same results.

Rerunning the same command resumes from the workdir's last checkpoint. With --num_shards > 1
(array jobs) each shard trains a slice of the network list into WORKDIR/shards/; run
``python -m tg_jax.merge --workdir=WORKDIR`` once all are done.
"""

import os
import sys
from typing import Optional

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from tg_jax import cache
from tg_jax import console
from tg_jax import finish as finish_lib
from tg_jax import workdir as workdir_lib
from tg_jax.selection.tables import TableError
from tg_jax.training import checkpoints
from tg_jax.training import config as config_lib
from tg_jax.training import planning
from tg_jax.training import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. experiments/pairs.py "
                                          "or experiments/pairs.py:full.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, results and the report go; default "
                               "workdirs/<config name>[_<variant>].")
_SHARD_INDEX = flags.DEFINE_integer("shard_index", 0, "This job's slice of the network list (array jobs).")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Number of slices the network list is split into.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (one process per "
                               "host; SLURM and other clusters are detected automatically).")
flags.mark_flags_as_required(["config"])


def default_workdir(config_argument: str) -> str:
  """``experiments/pairs.py:full`` -> ``workdirs/pairs_full``."""
  path, _, variant = config_argument.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("workdirs", f"{name}_{variant}" if variant else name)


# Errors that are the user's to fix (workdir, tables): one line, no traceback. Config errors come from
# ``config.validate``, before any work.
USER_ERRORS = (checkpoints.ConfigMismatchError, workdir_lib.WorkdirError, TableError, planning.MappingLimitError)


def unknown_override(argv: list[str], config: ml_collections.ConfigDict) -> Optional[str]:
  """The first ``--config.<key>`` of ``argv`` that names no key of ``config``."""
  known = config_lib.flat_keys(config)
  for argument in argv[1:]:
    if argument.startswith("--config."):
      key = argument[len("--config."):].partition("=")[0]
      if key not in known and not any(k.startswith(key + ".") for k in known):
        return key
  return None


def _config_argument(argv: list[str]) -> Optional[str]:
  """The ``--config=FILE[:VARIANT]`` of ``argv``."""
  for index, argument in enumerate(argv[1:], 1):
    if argument.startswith("--config="):
      return argument.partition("=")[2]
    if argument == "--config" and index + 1 < len(argv):
      return argv[index + 1]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with one line instead of a traceback for an override of a key the config
  lacks (``--config.optimizer.lerning_rate=0.1``)."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError, flags.Error) as error:
    argument = _config_argument(argv)
    if argument is None:
      raise
    path, _, variant = argument.partition(":")
    try:  # the config as --config loads it, without the overrides
      experiment = config_lib.load_experiment(os.path.dirname(path), os.path.splitext(os.path.basename(path))[0])
      config = experiment.get_config(variant) if variant else experiment.get_config()
    except Exception:  # pylint: disable=broad-except  # the config file itself fails: absl's report says how
      raise error from None
    key = unknown_override(argv, config)
    if key is None:
      raise
    console.fail(config_lib.unknown_key_error(key, config_lib.flat_keys(config)))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  console.quiet_libraries()  # libraries' INFO lines (TPU probe, TFDS, orbax) stay off the console
  if _MULTIHOST.value:
    jax.distributed.initialize()
  compilation_cache = cache.enable_compilation_cache()
  workdir = _WORKDIR.value
  if workdir is None:
    workdir = default_workdir(flags.FLAGS["config"].serialize().partition("=")[2])
    print(f"--workdir not given; using {workdir}", flush=True)
  logging.info("JAX process %d of %d, local devices: %s; compilation cache: %s", jax.process_index(),
               jax.process_count(), jax.local_devices(), compilation_cache or "off")
  config = _CONFIG.value
  sharded = _NUM_SHARDS.value > 1
  run_dir = workdir_lib.Workdir(workdir).shard(_SHARD_INDEX.value, _NUM_SHARDS.value).path if sharded else workdir
  try:
    config_lib.validate(config)  # before the workdir is touched: a typo leaves nothing behind
  except ValueError as error:
    console.fail(str(error))
  try:
    with workdir_lib.locked(workdir_lib.Workdir(run_dir), enabled=jax.process_index() == 0):
      status = run(config, workdir, run_dir, sharded)
  except USER_ERRORS as error:
    console.fail(str(error))
  if status is not None:
    sys.exit(status)


def run(config: ml_collections.ConfigDict, workdir: str, run_dir: str, sharded: bool) -> Optional[int]:
  """Trains into ``run_dir``, then (unsharded) finishes ``workdir``; returns an exit status, or None."""
  result = trainer.train_and_evaluate(config, run_dir, shard_index=_SHARD_INDEX.value, num_shards=_NUM_SHARDS.value)
  if result["status"] == trainer.STATUS_PREEMPTED:
    return finish_lib.EXIT_PREEMPTED
  if sharded:
    if jax.process_index() == 0:
      print(f"shard {_SHARD_INDEX.value} of {_NUM_SHARDS.value} done; when all are, run: "
            f"python -m tg_jax.merge --workdir={workdir}", flush=True)
    return None
  text = finish_lib.finish(config, workdir)
  if text is None:
    return finish_lib.EXIT_PREEMPTED
  if text:
    print(text)
  return None


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
