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
import os
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
from tg_jax.training import ensemble
from tg_jax.training import networks as networks_lib
from tg_jax.training import planning
from tg_jax.training import preemption
from tg_jax.training import tracking

STATUS_COMPLETE = "complete"
STATUS_PREEMPTED = "preempted"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, shard_index: int = 0,
                       num_shards: int = 1) -> dict[str, Any]:
  """Trains the networks of ``config`` (this shard's slice of them) and writes results to ``workdir``.

  Resumes from ``workdir``'s newest intact checkpoint when there is one (refusing a different
  config); on a finished workdir only rewrites the tables from ``results/networks.json``
  (``_finished_run``). Holds the workdir's lock (``workdir.locked``) throughout.

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
  with workdir_lib.locked(paths, enabled=is_writer):
    checkpoints.check_or_write_config(config, workdir)
    summary = _finished_run(config, paths, my_networks, measured_by_tag, is_writer)
    if summary is None:
      summary = _train(config, paths, all_networks, my_networks, measured_by_tag, is_writer)
  return summary


def _finished_run(config: ml_collections.ConfigDict, paths: workdir_lib.Workdir,
                  my_networks: Sequence[networks_lib.Network], measured_by_tag: Optional[networks_lib.Network],
                  is_writer: bool) -> Optional[dict[str, Any]]:
  """The summary of a workdir that has finished training these networks, or None if it has not.

  Finished: ``results/networks.json`` (written last) lists exactly ``my_networks`` and the per-example
  losses (and TAG's affinities, if this run measures them) are readable. The tables and
  ``methods.json`` are then rewritten from the records (``tracking.write_tables``: a lost or damaged
  table comes back), without compiling anything. Otherwise the run restores its last checkpoint,
  which on a finished run skips training and evaluates again, rewriting every results file.
  """
  try:
    run = paths.read_run()
    if run is None or [n.name for n in run.networks] != [n.name for n in my_networks]:
      return None
    readable = all(paths.read_examples(split) is not None for split in workdir_lib.EXAMPLE_SPLITS
                   if any(not n.method and n.status == records.TRAINED for n in run.networks))
    tag = paths.read_tag() if measured_by_tag in my_networks else None
  except workdir_lib.WorkdirError as error:
    logging.warning("%s; evaluating the last checkpoint again to rewrite it", error)
    return None
  if not readable or (measured_by_tag in my_networks and tag is None):
    return None
  if is_writer:
    tracking.write_tables(paths, run, tuple(config.tasks), len(networks_lib.seeds(config)) > 1)
  logging.info("%s has finished training; results tables rewritten from %s", paths.path,
               paths.relative(paths.networks))
  summary = {"status": STATUS_COMPLETE, "step": run.schedule.stop_step, "workdir": paths.path, "run": run}
  if tag is not None:
    summary["tag"] = tag
  return summary


def _train(config: ml_collections.ConfigDict, paths: workdir_lib.Workdir,
           all_networks: Sequence[networks_lib.Network], my_networks: Sequence[networks_lib.Network],
           measured_by_tag: Optional[networks_lib.Network], is_writer: bool) -> dict[str, Any]:
  """Trains ``my_networks`` from the workdir's last checkpoint, then evaluates and writes the results."""
  workdir = paths.path
  checkpointer = checkpoints.Checkpointer(paths.checkpoints, damaged_directory=paths.damaged_checkpoints)
  # Read back whole before anything compiles: a damaged checkpoint is set aside in seconds.
  start_step = checkpointer.latest_intact_step() or 0
  names = [n.name for n in my_networks]
  if start_step:
    _check_networks(checkpointer.progress(start_step), names, workdir)
  mesh = _device_mesh(config)
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
  datasets = _load_datasets(config)
  image_shape = tuple(datasets["train"].image_shape)
  schedule = records.Schedule.from_config(config, datasets["train"].num_examples)
  logging.info("%d networks (%d in this shard) | %d steps, validating every %d | ESA at step %d | %d devices",
               len(all_networks), len(my_networks), schedule.stop_step, schedule.steps_per_epoch,
               schedule.esa_step, mesh.size)

  # One batch stream per replica seed this shard trains, from where the checkpoint left it.
  saved_streams = checkpointer.data_states(start_step) if start_step else {}
  streams = {seed: _local_train_batches(datasets["train"], config, start_step, seed, saved_streams.get(seed))
             for seed in dict.fromkeys(n.seed for n in my_networks)}
  data_streams = checkpoints.DataStreams(streams)
  train_batches = {seed: (_global_batch(b, batch_sharding) for b in stream) for seed, stream in streams.items()}
  first_seed = next(iter(train_batches))
  first_batch = next(train_batches[first_seed])
  train_batches[first_seed] = itertools.chain([first_batch], train_batches[first_seed])
  abstract_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding),
                                first_batch)

  optimizer = cohort_lib.make_optimizer(config.optimizer, schedule.steps_per_epoch)
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  device = mesh.devices.flat[0]
  cohort_specs = networks_lib.cohorts(my_networks, config.tasks, not models.shares_one_encoder(config.model))
  runners = cohorts_lib.make_runners(cohort_specs, config,
                                     schedule.steps_per_epoch, image_shape, optimizer, dtype, device.platform,
                                     replicated, batch_sharding)
  chunk_sizes = planning.plan_chunks(runners, config, abstract_batch, image_shape, device)
  cohorts = cohorts_lib.Cohorts(runners, chunk_sizes, networks_lib.positions(all_networks), config.seed,
                                image_shape, abstract_batch, replicated)
  if not start_step:  # a checkpoint holds the loaded encoders already
    cohorts.load_encoders(_transfer_encoders(config, paths, my_networks, image_shape))
  tag_meter = None
  if measured_by_tag in my_networks:  # in an array job, only the shard that trains it measures
    tag_meter = meter_lib.TagMeter(measured_by_tag, cohorts.chunk_of(measured_by_tag), image_shape,
                                   config.tag.every_steps, config.optimizer.learning_rate, replicated)

  if start_step:
    _restore_checkpoint(checkpointer, start_step, cohorts, tag_meter)
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
        _save_checkpoint(checkpointer, step, names, cohorts, tag_meter, data_streams)
        reporter.validated(step, val_losses)

      if step < schedule.stop_step and stop.agreed(step, config.log_every_steps):
        if checkpointer.latest_step() != step:  # validation may just have saved this step
          _save_checkpoint(checkpointer, step, names, cohorts, tag_meter, data_streams)
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


def _transfer_encoders(config: ml_collections.ConfigDict, paths: workdir_lib.Workdir,
                       networks: Sequence[networks_lib.Network],
                       image_shape: Sequence[int]) -> dict[networks_lib.Network, dict[str, Any]]:
  """Per transfer network (``<target>:from_<source>``), the variables of its source: the
  best-validation checkpoint of the single-task network of ``source`` (same size and seed) in the
  workdir ``config.transfer.encoders`` (relative to this run's), read with that run's config."""
  wanted = [n for n in networks if n.transfer_source]
  if not wanted:
    return {}
  source = workdir_lib.Workdir(os.path.normpath(os.path.join(paths.path, config.transfer.encoders)))
  source_config = source.read_config()
  if source_config is None:
    raise workdir_lib.WorkdirError(f"transfer.encoders={config.transfer.encoders!r} names {source.path}, which "
                                   f"holds no run (no config.json); point it at the workdir that trained the "
                                   f"single-task networks")
  sources = {n: networks_lib.Network((n.transfer_source,), n.size, seed=n.seed).name for n in wanted}
  variables = ensemble.best_variables(ml_collections.ConfigDict(source_config), source.path,
                                      sorted(set(sources.values())), image_shape)
  logging.info("transfer networks: frozen encoders of %s from %s", ", ".join(sorted(set(sources.values()))),
               source.path)
  return {n: variables[sources[n]][1] for n in wanted}


def _load_datasets(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return {split: data.load(config.data, tasks=tuple(config.tasks), split=split)
          for split in ("train", tracking.VALIDATION, "test")}


def _device_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """A one-axis (``"data"``) mesh over ``config.num_devices`` local devices, or all devices (counts
  checked by ``config.validate``)."""
  devices = jax.local_devices()[:config.num_devices] if config.num_devices else jax.devices()
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


def _local_train_batches(dataset: Any, config: ml_collections.ConfigDict, start_step: int, replica_seed: int,
                         state: Optional[bytes]) -> Iterator[dict[str, np.ndarray]]:
  """This process's rows of replica ``replica_seed``'s training batches from step ``start_step`` on (batch k
  depends only on the seed and k), restored from ``state`` (``Batches.get_state``) when given."""
  return dataset.train_batches(config.batch_size // jax.process_count(), seed=data_seed(config.seed, replica_seed),
                               start_step=start_step, shard_index=jax.process_index(),
                               num_shards=jax.process_count(), state=state)


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
  """Each network's measured inference cost in SNT; a soft-sharing network runs one single-task
  network per task. For families without one shared encoder (the run's model, or a network trained
  as an architecture) the cost depends on the number of tasks (everything before the heads counts)."""

  def cost_key(network: networks_lib.Network) -> tuple[str, float, Optional[int]]:
    family = network.method if network.method in records.ARCHITECTURES else ""
    per_task_count = not models.shares_one_encoder(cohorts_lib.method_model_config(config.model, network.method))
    return family, network.size, len(network.tasks) // network.encoders if per_task_count else None

  costs = {key: models.encoder_cost(cohorts_lib.method_model_config(config.model, key[0]), key[1], image_shape, key[2])
           for key in {cost_key(n) for n in networks}}
  return {n: n.encoders * costs[cost_key(n)] for n in networks}


def _checkpoint_state(cohorts: cohorts_lib.Cohorts, tag_meter: Optional[meter_lib.TagMeter]) -> dict[str, Any]:
  """What a checkpoint holds: each cohort's ``CohortState`` by cohort name, and TAG's affinity sum."""
  state: dict[str, Any] = cohorts.full_state()
  if tag_meter:
    state[meter_lib.TAG_STATE] = tag_meter.affinity
  return state


def _save_checkpoint(checkpointer: checkpoints.Checkpointer, step: int, names: Sequence[str],
                     cohorts: cohorts_lib.Cohorts, tag_meter: Optional[meter_lib.TagMeter],
                     data_streams: checkpoints.DataStreams) -> None:
  checkpointer.save(step, _checkpoint_state(cohorts, tag_meter), {"step": step, "networks": list(names)},
                    data_streams)


def _check_networks(progress: Mapping[str, Any], names: Sequence[str], workdir: str) -> None:
  """Refuses a checkpoint of other networks than ``names`` (this run's, in order)."""
  if progress.get("networks") != list(names):
    raise checkpoints.ConfigMismatchError(
        f"the checkpoint in {workdir} holds networks {progress.get('networks')} but this run trains {list(names)}; "
        f"pass the same --shard_index/--num_shards as the run that made it, or a new --workdir")


def _restore_checkpoint(checkpointer: checkpoints.Checkpointer, step: int, cohorts: cohorts_lib.Cohorts,
                        tag_meter: Optional[meter_lib.TagMeter]) -> None:
  """Loads checkpoint ``step`` into ``cohorts`` and ``tag_meter``."""
  restored, _ = checkpointer.restore(step, _checkpoint_state(cohorts, tag_meter))
  cohorts.load_state(restored)
  if tag_meter:
    tag_meter.load(restored[meter_lib.TAG_STATE])
