r"""Joins the results of an array job's shards, then retrains, selects and reports as ``tg_jax.main`` does.

  python -m tg_jax.merge --workdir=WORKDIR

Each shard (``tg_jax.main --shard_index=i --num_shards=n``) trained a slice of the network list (every
seed replica of every network) into ``WORKDIR/shards/shard_<i>_of_<n>/``. The merged tables and the
per-example losses behind them list the networks in the order of the unsharded list, so they equal
what one job training everything would write; ``methods.json`` (the networks trained with a
balancing method or soft sharing) is joined the same way and ``tag.json`` comes from the shard that
trained TAG's network.
"""

import os
import sys
from typing import Optional

from absl import app
from absl import flags
from absl import logging
import ml_collections

from tg_jax import console
from tg_jax import finish as finish_lib
from tg_jax import records
from tg_jax import workdir as workdir_lib
from tg_jax.selection import tables
from tg_jax.training import networks as networks_lib
from tg_jax.training import results


def merge(workdir: str, allow_missing: bool = False) -> ml_collections.ConfigDict:
  """Writes ``WORKDIR/results/`` from the shards' results; returns the shards' (common) config."""
  paths = workdir_lib.Workdir(workdir)
  with workdir_lib.locked(paths):
    return _merge(paths, allow_missing)


def _merge(paths: workdir_lib.Workdir, allow_missing: bool) -> ml_collections.ConfigDict:
  workdir = paths.path
  shards = paths.shards()
  if not shards:
    raise workdir_lib.WorkdirError(f"no shards in {workdir}/shards; run tg_jax.main with --num_shards first")
  configs = [workdir_lib.read_json(shard.config) for shard in shards]
  if any(c != configs[0] for c in configs):
    raise ValueError(f"the shards in {workdir}/shards were trained with different configs; merge only shards "
                     f"of one experiment")
  config = ml_collections.ConfigDict(configs[0])
  num_shards = int(shards[0].path.rsplit("_of_", 1)[1])
  expected = {paths.shard(i, num_shards).path for i in range(num_shards)}
  finished = [shard for shard in shards if shard.read_run() is not None]
  missing = expected - {shard.path for shard in finished}
  if missing and not allow_missing:
    raise workdir_lib.WorkdirError(f"shards not finished: {', '.join(sorted(os.path.basename(m) for m in missing))}; rerun them "
                       f"(they resume) or pass --allow_missing to merge the others")
  order = {n.name: i for i, n in enumerate(networks_lib.from_config(config))}
  runs = [shard.read_run() for shard in finished]
  if any(run.schedule != runs[0].schedule for run in runs):
    raise ValueError(f"the shards in {workdir}/shards ran different schedules; merge only shards of one experiment")
  network_records = sorted((n for run in runs for n in run.networks), key=lambda n: order[n.name])
  methods, tag = {}, None
  for shard in finished:
    methods.update(shard.read_methods())
    tag = shard.read_tag() or tag
  seeded = len(networks_lib.seeds(config)) > 1
  for split in workdir_lib.SPLITS:
    rows = [row for shard in finished for row in _table_rows(shard, split, seeded)]
    rows.sort(key=lambda row: order[row.name])
    table = results.results_table(tuple(config.tasks), rows, split, seeded)
    if table is None:
      continue
    paths.write_table(split, table.replicas, seed_column=seeded)
    if split in workdir_lib.EXAMPLE_SPLITS:
      _merge_examples(paths, split, finished, table)
  if methods:
    workdir_lib.write_json(paths.methods, {name: methods[name] for name in sorted(methods, key=order.__getitem__)})
  if tag is not None:
    workdir_lib.write_json(paths.tag, tag)
  paths.write_run(records.RunRecord(tuple(network_records), runs[0].constant_predictor, runs[0].schedule,
                                    tuple(os.path.basename(shard.path) for shard in finished)))
  return config


def _table_rows(shard: workdir_lib.Workdir, split: str, seeded: bool) -> list[results.TableRow]:
  """The rows of a shard's ``split`` table, each named after the network its shard's records say it is.

  A row is known by its tasks and cost, and by its seed when the run has more than one (a one-seed
  table has no seed column, whatever the seed).
  """
  replicas = shard.read_table(split)
  if replicas is None:
    return []
  networks = {(n.key, n.seed if seeded else None): n for n in shard.read_run().networks if not n.method}
  rows = []
  for tasks, cost, seed, losses in replicas.rows():
    network = networks[tables.network_key(tasks, cost), seed if seeded else None]
    rows.append(results.TableRow(network.name, tuple(tasks), cost, network.seed, losses))
  return rows


def _merge_examples(paths: workdir_lib.Workdir, split: str, shards: list[workdir_lib.Workdir],
                    table: results.NamedTable) -> None:
  """``results/examples_<split>.npz`` from the shards', in the merged table's rows; left out with a
  warning when a shard has none (written before the file existed)."""
  losses = {}
  for shard in shards:
    examples = shard.read_examples(split)
    if examples is None:
      logging.warning("%s has no per-example losses; %s is not written", shard.relative(shard.examples(split)),
                      paths.relative(paths.examples(split)))
      return
    losses.update(examples.by_network())
  paths.write_examples(split, workdir_lib.Examples.from_networks(table.names, table.replicas.table.task_names, losses))


def run(workdir: str, allow_missing: bool = False) -> Optional[str]:
  """Merges the shards, then retrains, selects and reports as ``tg_jax.main`` does; returns the text
  to print, or None when the retraining phase was preempted (run the same command again)."""
  return finish_lib.finish(merge(workdir, allow_missing), workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  console.quiet_libraries()
  try:
    text = run(flags.FLAGS.workdir, flags.FLAGS.allow_missing)
  except (workdir_lib.WorkdirError, tables.TableError) as error:
    console.fail(str(error))
  if text is None:
    sys.exit(finish_lib.EXIT_PREEMPTED)
  print(text)


if __name__ == "__main__":
  # Defined here, not at import, so that tg_jax.main (which has its own --workdir) can be imported
  # alongside this module.
  flags.DEFINE_string("workdir", None, "The --workdir the shards were run with.")
  flags.DEFINE_bool("allow_missing", False, "Merge the finished shards even if some are missing or unfinished "
                    "(their networks are left out).")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
