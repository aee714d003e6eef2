"""Merging an array job's shards: method networks, TAG's affinities and the schedule come along."""

import json

import pytest

import train_fakes
from tg_jax import merge
from tg_jax import records
from tg_jax import workdir as workdir_lib

ALL_TASKS = "+".join(train_fakes.tiny_config().tasks)
# An ESA-only run: the schedule stops at 20% of its length, so its tables are not converged.
EARLY_SCHEDULE = records.Schedule(steps_per_epoch=5, total_steps=25, stop_step=5, eval_steps=(5,), esa_step=5)


def _record(name, cost=1.0):
  network_tasks = tuple(name.partition(":")[0].split("+"))
  losses = {t: 0.5 for t in network_tasks}
  return records.NetworkRecord(
      name=name, tasks=network_tasks, size=1.0, method=name.partition(":")[2], cost=cost, status=records.TRAINED,
      best_step=5, val=losses, test=losses, esa=losses, val_peak=losses, val_peak_step=dict.fromkeys(losses, 5),
      improvement_over_constant={"val": losses, "test": losses})


def _write_shard(workdir, index, config, names, methods, tag=None, schedule=EARLY_SCHEDULE):
  shard = workdir_lib.Workdir(workdir).shard(index, 2)
  workdir_lib.write_json(shard.config, json.loads(config.to_json()))
  shard.write_run(records.RunRecord(tuple(_record(n) for n in names), {"validation": {}, "test": {}}, schedule))
  workdir_lib.write_json(shard.methods, methods)
  if tag is not None:
    workdir_lib.write_json(shard.tag, tag)


def _method_config():
  config = train_fakes.tiny_config()
  config.networks.subsets = ""
  config.networks.half_size_singles = False
  config.networks.extra = (ALL_TASKS, f"{ALL_TASKS}:mgda", f"{ALL_TASKS}:soft", f"{ALL_TASKS}:uncertainty")
  return config


def test_merge_joins_methods_in_network_order_and_keeps_tag(tmp_path):
  config = _method_config()
  mgda, soft, uncertainty = config.networks.extra[1:]
  method = lambda name: {"method": name, "val": {"toy_depth": 0.5}, "test": {"toy_depth": 0.6}}
  tag = {"tasks": list(train_fakes.tiny_config().tasks), "affinity": [[0.1] * 3] * 3, "measurements": 4}
  # Striding puts networks 0 and 2 in shard 0, 1 and 3 in shard 1.
  _write_shard(str(tmp_path), 0, config, [ALL_TASKS, soft], {soft: method("soft")}, tag)
  _write_shard(str(tmp_path), 1, config, [mgda, uncertainty],
               {uncertainty: method("uncertainty"), mgda: method("mgda")})

  merge.merge(str(tmp_path))

  merged = workdir_lib.Workdir(str(tmp_path))
  methods = merged.read_methods()
  assert list(methods) == [mgda, soft, uncertainty]
  assert methods[mgda]["method"] == "mgda" and methods[soft]["test"] == {"toy_depth": 0.6}
  assert merged.read_tag() == tag
  assert [n.name for n in merged.read_run().networks] == list(config.networks.extra)


def test_merged_early_stopped_run_keeps_its_schedule_so_it_is_not_taken_as_converged(tmp_path):
  config = _method_config()
  _write_shard(str(tmp_path), 0, config, [ALL_TASKS, config.networks.extra[2]], {})
  _write_shard(str(tmp_path), 1, config, list(config.networks.extra[1::2]), {})

  merge.merge(str(tmp_path))

  assert workdir_lib.Workdir(str(tmp_path)).read_run().schedule == EARLY_SCHEDULE


def test_merge_refuses_shards_of_different_schedules(tmp_path):
  config = _method_config()
  _write_shard(str(tmp_path), 0, config, [ALL_TASKS, config.networks.extra[2]], {})
  _write_shard(str(tmp_path), 1, config, list(config.networks.extra[1::2]), {},
               schedule=records.Schedule(5, 25, 25, (5, 10, 15, 20, 25), 5))
  with pytest.raises(ValueError, match="different schedules"):
    merge.merge(str(tmp_path))


def test_a_networks_record_without_schedule_is_refused_with_the_fix(tmp_path):
  paths = workdir_lib.Workdir(str(tmp_path))
  workdir_lib.write_json(paths.networks, {"networks": [], "constant_predictor": {}})
  with pytest.raises(workdir_lib.WorkdirError, match="no 'schedule'.*tg_jax.merge"):
    paths.read_run()
