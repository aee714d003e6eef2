"""Merging an array job's shards: the method networks' results and TAG's affinities come along."""

import json
import os

import train_fakes
from tg_jax import main
from tg_jax import merge
from tg_jax.training import checkpoints
from tg_jax.training import results
from tg_jax.training import trainer

ALL_TASKS = "+".join(train_fakes.tiny_config().tasks)


def _write_shard(workdir, index, config, names, methods, tag=None):
  shard = main.shard_workdir(workdir, index, 2)
  os.makedirs(os.path.join(shard, results.RESULTS_DIR))
  with open(os.path.join(shard, checkpoints.CONFIG_FILE), "w") as f:
    f.write(config.to_json())
  networks = [{"name": name, "tasks": name.partition(":")[0].split("+"), "cost": 1.0} for name in names]
  results.write_json(os.path.join(shard, results.RESULTS_DIR, "networks.json"),
                     {"networks": networks, "constant_predictor": {}})
  results.write_json(os.path.join(shard, results.RESULTS_DIR, trainer.METHODS_FILE), methods)
  if tag is not None:
    results.write_json(os.path.join(shard, results.RESULTS_DIR, trainer.TAG_FILE), tag)


def test_merge_joins_methods_in_network_order_and_keeps_tag(tmp_path):
  config = train_fakes.tiny_config()
  config.networks.subsets = ""
  config.networks.half_size_singles = False
  mgda, soft, uncertainty = f"{ALL_TASKS}:mgda", f"{ALL_TASKS}:soft", f"{ALL_TASKS}:uncertainty"
  config.networks.extra = (ALL_TASKS, mgda, soft, uncertainty)
  record = lambda method: {"method": method, "val": {"toy_depth": 0.5}, "test": {"toy_depth": 0.6}}
  tag = {"tasks": list(train_fakes.tiny_config().tasks), "affinity": [[0.1] * 3] * 3, "measurements": 4}
  # Striding puts networks 0 and 2 in shard 0, 1 and 3 in shard 1.
  _write_shard(str(tmp_path), 0, config, [ALL_TASKS, soft], {soft: record("soft")}, tag)
  _write_shard(str(tmp_path), 1, config, [mgda, uncertainty],
               {uncertainty: record("uncertainty"), mgda: record("mgda")})

  merge.merge(str(tmp_path))

  with open(tmp_path / results.RESULTS_DIR / trainer.METHODS_FILE) as f:
    methods = json.load(f)
  assert list(methods) == [mgda, soft, uncertainty]
  assert methods[mgda]["method"] == "mgda" and methods[soft]["test"] == {"toy_depth": 0.6}
  with open(tmp_path / results.RESULTS_DIR / trainer.TAG_FILE) as f:
    assert json.load(f) == tag
