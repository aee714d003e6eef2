r"""Joins the results of an array job's shards, then retrains, selects and reports as ``tg_jax.main`` does.

  python -m tg_jax.merge --workdir=WORKDIR

Each shard (``tg_jax.main --shard_index=i --num_shards=n``) trained a slice of the network list
into ``WORKDIR/shards/shard_<i>_of_<n>/``. The merged tables list the networks in the order of the
unsharded list, so they equal what one job training everything would write; ``methods.json`` (the
networks trained with a balancing method or soft sharing) is joined the same way and ``tag.json``
comes from the shard that trained TAG's network.
"""

import glob
import json
import os

from absl import app
from absl import flags
import ml_collections

from tg_jax.selection import tables
from tg_jax.training import checkpoints
from tg_jax.training import networks as networks_lib
from tg_jax.training import results
from tg_jax.training import retrain
from tg_jax.training import summary
from tg_jax.training import trainer

TABLES = ("val.csv", "test.csv", "esa.csv")


def merge(workdir: str, allow_missing: bool = False) -> ml_collections.ConfigDict:
  """Writes ``WORKDIR/results/`` from the shards' results; returns the shards' (common) config."""
  shard_dirs = sorted(glob.glob(os.path.join(workdir, "shards", "shard_*_of_*")))
  if not shard_dirs:
    raise FileNotFoundError(f"no shards in {workdir}/shards; run tg_jax.main with --num_shards first")
  configs = []
  for shard_dir in shard_dirs:
    with open(os.path.join(shard_dir, checkpoints.CONFIG_FILE)) as f:
      configs.append(json.load(f))
  if any(c != configs[0] for c in configs):
    raise ValueError(f"the shards in {workdir}/shards were trained with different configs; merge only shards "
                     f"of one experiment")
  config = ml_collections.ConfigDict(configs[0])
  num_shards = int(shard_dirs[0].rsplit("_of_", 1)[1])
  expected = {f"shard_{i:03d}_of_{num_shards:03d}" for i in range(num_shards)}
  finished = {os.path.basename(d) for d in shard_dirs
              if os.path.exists(os.path.join(d, results.RESULTS_DIR, "networks.json"))}
  if finished != expected and not allow_missing:
    raise RuntimeError(f"shards not finished: {', '.join(sorted(expected - finished))}; rerun them (they resume) "
                       f"or pass --allow_missing to merge the others")
  order = {n.name: i for i, n in enumerate(networks_lib.from_config(config))}
  reports, constant, merged, methods, tag = [], None, {}, {}, None
  for name in sorted(finished):
    shard_results = os.path.join(workdir, "shards", name, results.RESULTS_DIR)
    with open(os.path.join(shard_results, "networks.json")) as f:
      shard_json = json.load(f)
    reports += shard_json["networks"]
    constant = shard_json["constant_predictor"]
    methods_path = os.path.join(shard_results, trainer.METHODS_FILE)
    if os.path.exists(methods_path):
      with open(methods_path) as f:
        methods.update(json.load(f))
    tag_path = os.path.join(shard_results, trainer.TAG_FILE)
    if os.path.exists(tag_path):
      with open(tag_path) as f:
        tag = json.load(f)
    for file in TABLES:
      path = os.path.join(shard_results, file)
      if os.path.exists(path):
        table = tables.read_csv(path)
        merged.setdefault(file, []).extend(
            (table.network_tasks[row], float(table.costs[row]),
             {t: float(v) for t, v in zip(table.task_names, table.losses[row]) if t in table.network_tasks[row]})
            for row in range(table.num_networks))
  # A table row is known by its tasks and cost; networks.json says which network that is.
  names = {(tuple(n["tasks"]), round(n["cost"], 6)): n["name"] for n in reports}
  rank = lambda row: order[names[(tuple(row[0]), round(row[1], 6))]]
  for file, rows in merged.items():
    table = results.results_table(tuple(config.tasks), sorted(rows, key=rank), file)
    tables.write_csv(table, os.path.join(workdir, results.RESULTS_DIR, file))
  reports.sort(key=lambda n: order[n["name"]])
  if methods:
    results.write_json(os.path.join(workdir, results.RESULTS_DIR, trainer.METHODS_FILE),
                       {name: methods[name] for name in sorted(methods, key=order.__getitem__)})
  if tag is not None:
    results.write_json(os.path.join(workdir, results.RESULTS_DIR, trainer.TAG_FILE), tag)
  results.write_json(os.path.join(workdir, results.RESULTS_DIR, "networks.json"),
                     {"networks": reports, "constant_predictor": constant, "shards": sorted(finished)})
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  workdir = flags.FLAGS.workdir
  config = merge(workdir, flags.FLAGS.allow_missing)
  # As in tg_jax.main: networks chosen from predictions but not trained to convergence are trained now.
  retrained = retrain.run(config, workdir)
  if retrained is not None and retrained["status"] == trainer.STATUS_PREEMPTED:
    raise SystemExit(f"retraining was preempted; run python -m tg_jax.merge --workdir={workdir} again (it resumes)")
  print(summary.write(workdir, config.selection.predict, config))


if __name__ == "__main__":
  # Defined here, not at import, so that tg_jax.main (which has its own --workdir) can be imported
  # alongside this module.
  flags.DEFINE_string("workdir", None, "The --workdir the shards were run with.")
  flags.DEFINE_bool("allow_missing", False, "Merge the finished shards even if some are missing or unfinished "
                    "(their networks are left out).")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
