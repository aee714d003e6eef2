"""Trains an experiment's networks together and writes their results tables.

``train_and_evaluate(config, workdir)`` is the whole run:

1. The network list (``networks.from_config``: every network once per seed of
   ``config.networks.seeds``) is grouped into cohorts by seed and size; each cohort is one model over
   its task union, its networks stacked on a leading axis (``cohort.CohortState``), in chunks as
   large as memory allows (``planning``), held on device by ``cohorts.Cohorts``.
2. Every step reads one global batch per seed (seed 0's is a one-seed run's batch; ``data_seed``)
   and runs each cohort chunk's jitted, vmapped step on its seed's batch. The batch is sharded over
   the devices of a one-axis mesh (``"data"``); the step is written for the global batch, so XLA
   averages gradients and batch statistics over devices (and hosts, after
   ``jax.distributed.initialize``).
3. After each "epoch" (``config.epoch_fraction`` of the training set) every network is validated on
   each of its tasks; trackers keep each network's best-validation checkpoint and each task's best
   loss and step. The first validation at ``config.esa_fraction`` of training is the ESA table.
   ``tracking.Reporter`` writes the tables and logs.
4. Checkpoints (orbax) follow every validation and every SIGTERM (``preemption``); the same command
   resumes.
5. At the end, each network's best-validation checkpoint is scored on the validation and test
   splits, keeping every example's loss (``results/examples_{val,test}.npz``).

Networks named with a method (``<tasks>:mgda``, ``:uncertainty``, ``:pcgrad``, ``:soft``, ...; see
``networks``) train in cohorts of their own with that method's gradient (``cohort.GradientFn``) and
are reported in ``results/methods.json`` instead of the selector's tables. With ``config.tag.enabled``
the TAG network's lookahead affinities (``affinity.meter``) are accumulated in the checkpointed state
and written to ``results/tag.json``.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator, Mapping, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tg_jax import data
from tg_jax import models
from tg_jax import records
from tg_jax import workdir as workdir_lib
from tg_jax.affinity import meter as meter_lib
from tg_jax.training import baseline
from tg_jax.training import checkpoints
from tg_jax.training import cohort as cohort_lib
from tg_jax.training import cohorts as cohorts_lib
from tg_jax.training import config as config_lib
from tg_jax.training import networks as networks_lib
from tg_jax.training import planning
from tg_jax.training import preemption
from tg_jax.training import tracking

STATUS_COMPLETE = "complete"
STATUS_PREEMPTED = "preempted"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, shard_index: int = 0,
                       num_shards: int = 1) -> dict[str, Any]:
  """Trains the networks of ``config`` (this shard's slice of them) and writes results to ``workdir``.

  Resumes from ``workdir``'s last checkpoint when there is one (refusing a different config).

  Returns:
    ``{"status": "complete" | "preempted", "step", "workdir"}``; when complete also ``"run"``, the
    ``records.RunRecord`` that ``results/networks.json`` holds, and, where this run measured TAG,
    ``"tag"``, what ``results/tag.json`` holds.
  """
  config_lib.validate(config)
  all_networks = networks_lib.from_config(config)  # every replica, seed after seed
  my_networks = networks_lib.shard(all_networks, shard_index, num_shards)
  measured_by_tag = meter_lib.measured_network(config, all_networks)
  is_writer = jax.process_index() == 0
  paths = workdir_lib.Workdir(workdir)
  checkpoints.check_or_write_config(config, workdir)

  mesh = _device_mesh(config)
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
  datasets = _load_datasets(config)
  image_shape = tuple(datasets["train"].image_shape)
  schedule = records.Schedule.from_config(config, datasets["train"].num_examples)
  logging.info("%d networks (%d in this shard) | %d steps, validating every %d | ESA at step %d | %d devices",
               len(all_networks), len(my_networks), schedule.stop_step, schedule.steps_per_epoch,
               schedule.esa_step, mesh.size)

  checkpointer = checkpoints.Checkpointer(paths.checkpoints)
  start_step = checkpointer.latest_step() or 0
  # One batch stream per replica seed this shard trains.
  train_batches = {seed: _train_batches(datasets["train"], config, start_step, batch_sharding, seed)
                   for seed in dict.fromkeys(n.seed for n in my_networks)}
  first_seed = next(iter(train_batches))
  first_batch = next(train_batches[first_seed])
  train_batches[first_seed] = itertools.chain([first_batch], train_batches[first_seed])
  abstract_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding),
                                first_batch)

  optimizer = cohort_lib.make_optimizer(config.optimizer, schedule.steps_per_epoch)
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  device = mesh.devices.flat[0]
  runners = cohorts_lib.make_runners(networks_lib.cohorts(my_networks, config.tasks), config,
                                     schedule.steps_per_epoch, image_shape, optimizer, dtype, device.platform,
                                     replicated, batch_sharding)
  chunk_sizes = planning.plan_chunks(runners, config, abstract_batch, image_shape, device)
  cohorts = cohorts_lib.Cohorts(runners, chunk_sizes, networks_lib.positions(all_networks), config.seed,
                                image_shape, abstract_batch, replicated)
  tag_meter = None
  if measured_by_tag in my_networks:  # in an array job, only the shard that trains it measures
    tag_meter = meter_lib.TagMeter(measured_by_tag, cohorts.chunk_of(measured_by_tag), image_shape,
                                   config.tag.every_steps, config.optimizer.learning_rate, replicated)

  names = [n.name for n in my_networks]
  if start_step:
    _restore_checkpoint(checkpointer, start_step, names, cohorts, tag_meter, workdir)
    logging.info("resumed from step %d of %s", start_step, workdir)

  reporter = tracking.Reporter(cohorts, my_networks, _inference_costs(config, my_networks, image_shape), config,
                               paths, schedule, start_step, _constant_predictor_losses(datasets, config), is_writer)

  status = STATUS_COMPLETE
  step = start_step
  with preemption.StopRequest() as stop:
    while step < schedule.stop_step:
      batches = {seed: next(stream) for seed, stream in train_batches.items()}
      if tag_meter:
        tag_meter.measure(step, batches[tag_meter.network.seed])  # before the update, on the step's batch
      metrics = cohorts.train(batches, step)
      reporter.add_training(metrics)
      step += 1
      if step == start_step + 1:  # the first step compiled; time the ones after it
        jax.block_until_ready(metrics)
        reporter.progress.start_timing(step)

      if step % config.log_every_steps == 0 or step == schedule.stop_step:
        reporter.log_training(step)

      if step in schedule.eval_steps:
        val_losses = cohorts.validate(_eval_batches(datasets[tracking.VALIDATION], config, batch_sharding), step,
                                      record_esa=step == schedule.esa_step)
        reporter.report_divergence(step)
        _save_checkpoint(checkpointer, step, names, cohorts, tag_meter)
        reporter.validated(step, val_losses)

      if step < schedule.stop_step and stop.agreed(step, config.log_every_steps):
        if checkpointer.latest_step() != step:  # validation may just have saved this step
          _save_checkpoint(checkpointer, step, names, cohorts, tag_meter)
        status = STATUS_PREEMPTED
        reporter.preempted(step)
        break

  summary: dict[str, Any] = {"status": status, "step": step, "workdir": workdir}
  if status == STATUS_COMPLETE:
    _, val_examples = cohorts.evaluate_examples(
        _eval_batches(datasets[tracking.VALIDATION], config, batch_sharding), use_best=True)
    test_losses, test_examples = cohorts.evaluate_examples(_eval_batches(datasets["test"], config, batch_sharding),
                                                           use_best=True)
    summary["run"] = reporter.finish(test_losses, {"val": val_examples, "test": test_examples})
    if tag_meter and is_writer:
      summary["tag"] = tag_meter.summary(schedule.stop_step)
      workdir_lib.write_json(paths.tag, summary["tag"])
    reporter.done(step)
  checkpointer.close()
  reporter.close()
  return summary


def _load_datasets(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return {split: data.load(config.data, tasks=tuple(config.tasks), split=split)
          for split in ("train", tracking.VALIDATION, "test")}


def _device_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """A one-axis (``"data"``) mesh over ``config.num_devices`` local devices, or all devices."""
  if config.num_devices:
    if jax.process_count() > 1:
      raise ValueError("num_devices selects local devices of a single host; leave it 0 on multi-host runs")
    if config.num_devices > jax.local_device_count():
      raise ValueError(f"num_devices={config.num_devices} but this host has {jax.local_device_count()} "
                       f"devices; lower num_devices or leave it 0 for all")
    devices = jax.local_devices()[:config.num_devices]
  else:
    devices = jax.devices()
  for name, size in (("batch_size", config.batch_size), ("eval_batch_size", config.eval_batch_size)):
    if size % len(devices):
      raise ValueError(f"{name}={size} must be divisible by the {len(devices)} devices; change {name} or "
                       f"num_devices")
  return Mesh(np.asarray(devices), ("data",))


def _global_batch(local: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """One global batch from this process's rows of it."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def data_seed(seed: int, replica_seed: int) -> int:
  """The seed of replica ``replica_seed``'s training batches: the experiment's ``seed`` for replica 0
  (a one-seed run's batches), else one drawn from both (``numpy.random.SeedSequence``), so replicas of
  one experiment and experiments of neighbouring seeds all read different orders."""
  if not replica_seed:
    return seed
  return int(np.random.SeedSequence([seed, replica_seed]).generate_state(1)[0])


def _train_batches(dataset: Any, config: ml_collections.ConfigDict, start_step: int, sharding: NamedSharding,
                   replica_seed: int) -> Iterator[dict[str, jax.Array]]:
  """Global training batches of replica ``replica_seed`` from step ``start_step`` on (batch k depends
  only on the seed and k)."""
  local = dataset.train_batches(config.batch_size // jax.process_count(), seed=data_seed(config.seed, replica_seed),
                                start_step=start_step, shard_index=jax.process_index(),
                                num_shards=jax.process_count())
  return (_global_batch(b, sharding) for b in local)


def _eval_batches(dataset: Any, config: ml_collections.ConfigDict,
                  sharding: NamedSharding) -> Iterator[dict[str, jax.Array]]:
  """One pass over an evaluation split in global batches (padding rows have weight 0)."""
  local = dataset.eval_batches(config.eval_batch_size // jax.process_count(), shard_index=jax.process_index(),
                               num_shards=jax.process_count())
  return (_global_batch(b, sharding) for b in local)


def _constant_predictor_losses(datasets: Mapping[str, Any],
                               config: ml_collections.ConfigDict) -> dict[str, dict[str, float]]:
  """``{"validation"|"test": {task: loss}}`` of predicting the training split's mean: what each
  network's improvement is measured against."""
  batch_size = config.eval_batch_size // jax.process_count()
  constants = baseline.fit(datasets["train"].eval_batches(batch_size), config.tasks,
                           max_batches=config.baseline_batches)
  return {split: baseline.losses(datasets[split].eval_batches(batch_size), constants)
          for split in (tracking.VALIDATION, "test")}


def _inference_costs(config: ml_collections.ConfigDict, networks: Sequence[networks_lib.Network],
                     image_shape: Sequence[int]) -> dict[networks_lib.Network, float]:
  """Each network's measured inference cost in SNT; a soft-sharing network runs one encoder per task."""
  size_costs = {size: models.encoder_cost(config.model, size, image_shape) for size in {n.size for n in networks}}
  return {n: n.encoders * size_costs[n.size] for n in networks}


def _checkpoint_state(cohorts: cohorts_lib.Cohorts, tag_meter: Optional[meter_lib.TagMeter]) -> dict[str, Any]:
  """What a checkpoint holds: each cohort's ``CohortState`` by cohort name, and TAG's affinity sum."""
  state: dict[str, Any] = cohorts.full_state()
  if tag_meter:
    state[meter_lib.TAG_STATE] = tag_meter.affinity
  return state


def _save_checkpoint(checkpointer: checkpoints.Checkpointer, step: int, names: Sequence[str],
                     cohorts: cohorts_lib.Cohorts, tag_meter: Optional[meter_lib.TagMeter]) -> None:
  checkpointer.save(step, _checkpoint_state(cohorts, tag_meter), {"step": step, "networks": list(names)})


def _restore_checkpoint(checkpointer: checkpoints.Checkpointer, step: int, names: Sequence[str],
                        cohorts: cohorts_lib.Cohorts, tag_meter: Optional[meter_lib.TagMeter], workdir: str) -> None:
  """Loads checkpoint ``step`` into ``cohorts`` and ``tag_meter``; refuses one of other networks
  (``names``: this run's, in order)."""
  restored, progress = checkpointer.restore(step, _checkpoint_state(cohorts, tag_meter))
  if progress.get("networks") != list(names):
    raise checkpoints.ConfigMismatchError(
        f"the checkpoint in {workdir} holds networks {progress.get('networks')} but this run trains {list(names)}; "
        f"pass the same --shard_index/--num_shards as the run that made it, or a new --workdir")
  cohorts.load_state(restored)
  if tag_meter:
    tag_meter.load(restored[meter_lib.TAG_STATE])
