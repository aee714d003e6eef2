"""Trains an experiment's networks together and writes their results tables.

``train_and_evaluate(config, workdir)`` is the whole run:

1. The network list (``networks.from_config``) is grouped into cohorts by size; each cohort is one
   model over its task union, its networks stacked on a leading axis (``cohort.CohortState``).
2. Every step reads one global batch and runs each cohort chunk's jitted, vmapped step on it. The
   batch is sharded over the devices of a one-axis mesh (``"data"``); the step is written for the
   global batch, so XLA averages gradients and batch statistics over devices (and hosts, after
   ``jax.distributed.initialize``).
3. After each "epoch" (``config.epoch_fraction`` of the training set) every network is validated on
   each of its tasks; trackers keep each network's best-validation checkpoint and each task's best
   loss and step. The first validation at ``config.esa_fraction`` of training is the ESA table.
4. Checkpoints (orbax) follow every validation and every SIGTERM; the same command resumes.
5. At the end, each network's best-validation checkpoint is scored on the test split.

Networks named with a method (``<tasks>:mgda``, ``:uncertainty``, ``:pcgrad``, ``:soft``, ...; see
``networks``) train in cohorts of their own with that method's gradient (``cohort.GradientFn``) and
are reported in ``results/methods.json`` instead of the selector's tables. With ``config.tag.enabled``
the TAG network's lookahead affinities are accumulated in the checkpointed state and written to
``results/tag.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import signal
import threading
from typing import Any, Iterator, Mapping, Optional, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tg_jax import balancing
from tg_jax import data
from tg_jax import models
from tg_jax import records
from tg_jax import workdir as workdir_lib
from tg_jax.affinity import tag as tag_lib
from tg_jax.training import baseline
from tg_jax.training import checkpoints
from tg_jax.training import cohort as cohort_lib
from tg_jax.training import config as config_lib
from tg_jax.training import networks as networks_lib
from tg_jax.training import results

STATUS_COMPLETE = "complete"
STATUS_PREEMPTED = "preempted"
VALIDATION = "validation"  # the data pipeline's name of the validation split


@dataclasses.dataclass
class _Chunk:
  """Networks trained by one call of a cohort's step, with their state on device."""

  networks: tuple[networks_lib.Network, ...]
  task_mask: jax.Array  # [nets, tasks] bool
  state: cohort_lib.CohortState


def build_model(spec: networks_lib.Cohort, model_config: ml_collections.ConfigDict, dtype: Any = jnp.float32):
  """The model a cohort's networks share: decoders for its tasks; for soft sharing, one
  single-task network per task (``cohort.SoftSharedNetworks``)."""
  if spec.method == networks_lib.SOFT_SHARING:
    return cohort_lib.SoftSharedNetworks(tuple(models.build(model_config, (t,), spec.size, dtype) for t in spec.tasks))
  return models.build(model_config, spec.tasks, spec.size, dtype)


def make_balancer(method: str, config: ml_collections.ConfigDict, steps_per_epoch: int):
  """``balancing.get(method, **config.balancing_options[method])``; DWA's period defaults to one
  validation period, the paper's epoch."""
  options = dict(config.balancing_options.get(method, {}))
  if method == "dwa":
    options.setdefault("period", steps_per_epoch)
  return balancing.get(method, **options)


class _CohortRunner:
  """One cohort: its model, its jitted functions and its chunks."""

  def __init__(self, spec: networks_lib.Cohort, config: ml_collections.ConfigDict, steps_per_epoch: int,
               image_shape: Sequence[int], optimizer, dtype: Any, how: str, replicated: NamedSharding,
               batch_sharding: NamedSharding):
    self.spec = spec
    self.model = build_model(spec, config.model, dtype)
    self.optimizer = optimizer
    self._replicated = replicated
    task_names = spec.tasks
    self.balancer = None
    gradient_fn = None  # the paper's equal weights
    if spec.method == networks_lib.SOFT_SHARING:
      gradient_fn = cohort_lib.soft_sharing_gradients(
          model=self.model, task_names=task_names, weight=config.soft_sharing.weight,
          shared_names=cohort_lib.shared_parameter_names(self.model.members[0], image_shape))
    elif spec.method:
      self.balancer = make_balancer(spec.method, config, steps_per_epoch)
      gradient_fn = cohort_lib.balanced_gradients(
          model=self.model, task_names=task_names, balancer=self.balancer,
          shared_names=cohort_lib.shared_parameter_names(self.model, image_shape),
          needs_task_gradients=balancing.needs_task_gradients(spec.method))

    def train_step(state, batch, step, task_mask):
      return cohort_lib.train_step(state, batch, step, model=self.model, optimizer=optimizer,
                                   task_names=task_names, task_mask=task_mask, how=how, gradient_fn=gradient_fn)

    def eval_sums(params, batch_stats, batch):
      return (cohort_lib.eval_loss_sums(params, batch_stats, batch, model=self.model, task_names=task_names,
                                             how=how),
              jnp.sum(batch["weight"]))

    self._train_step = jax.jit(train_step, in_shardings=(replicated, batch_sharding, replicated, replicated),
                               out_shardings=replicated, donate_argnums=0)
    self.eval_sums = jax.jit(eval_sums, in_shardings=(replicated, replicated, batch_sharding),
                             out_shardings=replicated)
    self.record_validation = jax.jit(cohort_lib.record_validation, out_shardings=replicated, donate_argnums=0)
    self._compiled: dict[int, Any] = {}
    self.chunks: list[_Chunk] = []

  def init_state(self, indices: Sequence[int], seed: int, image_shape: Sequence[int]) -> cohort_lib.CohortState:
    """State of the networks at global list positions ``indices`` (their rngs depend on nothing else).

    Networks are initialised one at a time by one compiled function and then stacked: compiling
    the vmapped initialiser costs several times more on CPU, and the values are the same.
    """
    init_one = jax.jit(functools.partial(cohort_lib.init, self.model, self.optimizer, image_shape=tuple(image_shape),
                                         num_tasks=len(self.spec.tasks), balancer=self.balancer))
    states = [init_one(jax.random.fold_in(jax.random.PRNGKey(seed), i)[None]) for i in indices]
    return jax.device_put(cohort_lib.concatenate(states), self._replicated)

  def abstract_state(self, num_networks: int, image_shape: Sequence[int]) -> cohort_lib.CohortState:
    rngs = jax.ShapeDtypeStruct((num_networks, 2), jnp.uint32)
    shapes = jax.eval_shape(functools.partial(cohort_lib.init, self.model, self.optimizer,
                                              image_shape=tuple(image_shape), num_tasks=len(self.spec.tasks),
                                              balancer=self.balancer), rngs)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self._replicated), shapes)

  def compiled_step(self, num_networks: int, abstract_batch: Any, image_shape: Sequence[int]):
    """The train step compiled for ``num_networks`` networks (cached)."""
    if num_networks not in self._compiled:
      state = self.abstract_state(num_networks, image_shape)
      step = jax.ShapeDtypeStruct((), jnp.int32, sharding=self._replicated)
      mask = jax.ShapeDtypeStruct((num_networks, len(self.spec.tasks)), jnp.bool_, sharding=self._replicated)
      self._compiled[num_networks] = self._train_step.lower(state, abstract_batch, step, mask).compile()
    return self._compiled[num_networks]

  def train(self, batch: Any, step: jax.Array, abstract_batch: Any, image_shape: Sequence[int]) -> list[dict]:
    metrics = []
    for chunk in self.chunks:
      compiled = self.compiled_step(len(chunk.networks), abstract_batch, image_shape)
      chunk.state, chunk_metrics = compiled(chunk.state, batch, step, chunk.task_mask)
      metrics.append(chunk_metrics)
    return metrics


TAG_STATE = "tag_affinity"  # the checkpoint key of the TAG affinity sum


def tag_network(config: ml_collections.ConfigDict) -> networks_lib.Network:
  """The network ``config.tag`` measures affinities on (default: all tasks, equal weights, size 1)."""
  name = config.tag.network or networks_lib.Network(tuple(config.tasks), 1.0).name
  network = networks_lib.parse(name, config.tasks)
  if network.method or len(network.tasks) < 2:
    raise ValueError(f"tag.network {name!r}: TAG measures affinities between the tasks of an equal-weight "
                     f"network with at least two tasks; name one without ':method', e.g. "
                     f"{networks_lib.Network(tuple(config.tasks), 1.0).name!r}")
  return network


class _TagMeter:
  """TAG's lookahead affinities (``tg_jax.affinity.tag``) on one network while it trains.

  Every ``every_steps`` steps (from step 0), before the step's update, ``lookahead_affinity`` on
  the step's batch with the network's current parameters and learning rate; the sum
  (``AffinitySum``) is part of the checkpoint, so a resumed run measures the same.
  """

  def __init__(self, network: networks_lib.Network, runner: _CohortRunner, image_shape: Sequence[int],
               every_steps: int, base_learning_rate: float, replicated: NamedSharding):
    self.network = network
    self.every_steps = every_steps
    self._base_learning_rate = base_learning_rate
    (self._chunk, self._row), = [(chunk, chunk.networks.index(network)) for chunk in runner.chunks
                                 if network in chunk.networks]
    self._shared_names = cohort_lib.shared_parameter_names(runner.model, image_shape)
    self._loss_fn = cohort_lib.lookahead_loss_fn(runner.model, network.tasks)
    self.affinity = jax.device_put(tag_lib.AffinitySum.zeros(len(network.tasks)), replicated)

  def measure(self, step: int, batch: Mapping[str, jax.Array]) -> None:
    if step % self.every_steps:
      return
    state = self._chunk.state
    if int(state.diverged_step[self._row]) != cohort_lib.NOT_YET:
      return  # frozen at its last finite parameters: nothing more to learn from it
    row = lambda tree: jax.tree.map(lambda leaf: leaf[self._row], tree)
    shared, decoders = cohort_lib.split_shared(row(state.params), self._shared_names)
    learning_rate = self._base_learning_rate * cohort_lib.learning_rate_scale(state.opt_state)[self._row]
    affinity = tag_lib.lookahead_affinity(self._loss_fn, shared,
                                          {"params": decoders, "batch_stats": row(state.batch_stats)},
                                          batch, learning_rate)
    self.affinity = self.affinity.add(affinity)

  def summary(self, network_steps: int) -> dict[str, Any]:
    """What ``results/tag.json`` holds.

    ``lookahead_network_steps`` counts a forward pass as 1 and a backward pass as 2 units, so a
    training step is 3; a lookahead is one forward pass, one backward pass per task (the per-task
    gradients) and one forward pass per task (the losses after each step): ``(1 + 3 tasks) / 3``
    training steps.
    """
    count = int(self.affinity.count)
    num_tasks = len(self.network.tasks)
    return {"tasks": list(self.network.tasks), "affinity": np.asarray(self.affinity.mean()).tolist(),
            "measurements": count, "every_steps": self.every_steps, "network": self.network.name,
            "network_steps": network_steps, "lookahead_network_steps": count * (1 + 3 * num_tasks) / 3}


def _balanced_sizes(total: int, limit: int) -> list[int]:
  """``total`` split into ``ceil(total / limit)`` parts differing by at most one (at most 2 compiles)."""
  parts = math.ceil(total / limit)
  return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _tree_bytes(tree: Any) -> int:
  # ``leaf.dtype.itemsize`` rather than ``jnp.dtype``: PRNG key dtypes (PCGrad's state) have no numpy dtype.
  return sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def _memory_budget(device: jax.Device, fraction: float) -> Optional[int]:
  """Bytes one step may use: device memory, or host memory for CPU devices."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "bytes_limit" in stats:
    return int(fraction * stats["bytes_limit"])
  try:
    return int(fraction * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
  except (ValueError, OSError, AttributeError):
    return None


def _plan_chunks(runners: Sequence[_CohortRunner], config: ml_collections.ConfigDict, abstract_batch: Any,
                 image_shape: Sequence[int], device: jax.Device) -> dict[str, list[int]]:
  """Chunk sizes per cohort: as large as ``max_networks_per_chunk`` and device memory allow.

  The memory a step needs is read from XLA's analysis of the compiled step (compiled anyway), plus
  the states of all networks, which stay resident; a chunk that does not fit is halved.
  """
  budget = _memory_budget(device, config.memory_fraction)
  resident = sum(_tree_bytes(r.abstract_state(len(r.spec.networks), image_shape)) for r in runners)
  plan = {}
  for runner in runners:
    count = len(runner.spec.networks)
    limit = min(count, config.max_networks_per_chunk or count)
    while True:
      sizes = _balanced_sizes(count, limit)
      analysis = runner.compiled_step(max(sizes), abstract_batch, image_shape).memory_analysis()
      needed = resident + (analysis.temp_size_in_bytes if analysis is not None else 0)
      if budget is None or needed <= budget or limit == 1:
        break
      logging.info("cohort %s: %d networks per step need ~%.1f GiB of %.1f GiB; halving the chunk",
                   runner.spec.name, limit, needed / 2**30, budget / 2**30)
      limit = math.ceil(limit / 2)
    if budget is not None and needed > budget:
      logging.warning("cohort %s: even one network per step needs ~%.1f GiB, more than the %.1f GiB budget",
                      runner.spec.name, needed / 2**30, budget / 2**30)
    plan[runner.spec.name] = sizes
  return plan


class _StopRequest:
  """Turns SIGTERM (what a cluster sends before preemption) into a flag the loop checks."""

  def __init__(self):
    self.requested = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: saving a checkpoint and exiting", signum)
    self.requested = True

  def agreed(self, step: int, log_every: int) -> bool:
    """Whether to stop now; across hosts all must agree, so they vote at logging steps only."""
    if jax.process_count() == 1:
      return self.requested
    if step % log_every:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested))))

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _load_datasets(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return {split: data.load(config.data, tasks=tuple(config.tasks), split=split)
          for split in ("train", VALIDATION, "test")}


def _global_batch(local: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def _device_mesh(config: ml_collections.ConfigDict) -> Mesh:
  if config.num_devices:
    if jax.process_count() > 1:
      raise ValueError("num_devices selects local devices of a single host; leave it 0 on multi-host runs")
    if config.num_devices > jax.local_device_count():
      raise ValueError(f"num_devices={config.num_devices} but this host has {jax.local_device_count()} "
                       f"devices; lower num_devices or leave it 0 for all")
    devices = jax.local_devices()[:config.num_devices]
  else:
    devices = jax.devices()
  return Mesh(np.asarray(devices), ("data",))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, shard_index: int = 0,
                       num_shards: int = 1) -> dict[str, Any]:
  """Trains the networks of ``config`` (this shard's slice of them) and writes results to ``workdir``.

  Resumes from ``workdir``'s last checkpoint when there is one (refusing a different config).

  Returns:
    ``{"status": "complete" | "preempted", "step", "workdir", "results": {...}}``; the results
    are what ``results/networks.json`` holds.
  """
  config_lib.validate(config)
  all_networks = networks_lib.from_config(config)
  my_networks = networks_lib.shard(all_networks, shard_index, num_shards)
  measured_by_tag = tag_network(config) if config.tag.enabled else None
  if measured_by_tag and measured_by_tag not in all_networks:
    raise ValueError(f"tag.network {measured_by_tag.name!r} is not trained by this experiment; add it to "
                     f"config.networks.extra or name a listed network in tag.network")
  position = {network: i for i, network in enumerate(all_networks)}
  is_writer = jax.process_index() == 0
  paths = workdir_lib.Workdir(workdir)
  checkpoints.check_or_write_config(config, workdir)

  mesh = _device_mesh(config)
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
  for name, size in (("batch_size", config.batch_size), ("eval_batch_size", config.eval_batch_size)):
    if size % mesh.size:
      raise ValueError(f"{name}={size} must be divisible by the {mesh.size} devices; change {name} or num_devices")
  local_batch_size = config.batch_size // jax.process_count()
  local_eval_batch_size = config.eval_batch_size // jax.process_count()

  datasets = _load_datasets(config)
  image_shape = tuple(datasets["train"].image_shape)
  schedule = records.Schedule.from_config(config, datasets["train"].num_examples)
  logging.info("%d networks (%d in this shard) | %d steps, validating every %d | ESA at step %d | %d devices",
               len(all_networks), len(my_networks), schedule.stop_step, schedule.steps_per_epoch,
               schedule.esa_step, mesh.size)

  optimizer = cohort_lib.make_optimizer(config.optimizer, schedule.steps_per_epoch)
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  platform = mesh.devices.flat[0].platform

  def parallelism(spec: networks_lib.Cohort) -> str:
    if config.network_parallelism == "auto":
      return cohort_lib.choose_parallelism(platform, len(spec.networks))
    return config.network_parallelism

  runners = [_CohortRunner(spec, config, schedule.steps_per_epoch, image_shape, optimizer, dtype, parallelism(spec),
                           replicated, batch_sharding)
             for spec in networks_lib.cohorts(my_networks, config.tasks)]
  size_costs = {size: models.encoder_cost(config.model, size, image_shape) for size in {n.size for n in my_networks}}
  # Inference cost in SNT: a soft-sharing network runs one encoder per task.
  costs = {n: n.encoders * size_costs[n.size] for n in my_networks}

  checkpointer = checkpoints.Checkpointer(paths.checkpoints)
  start_step = checkpointer.latest_step() or 0

  def batches(start: int) -> Iterator[dict[str, jax.Array]]:
    local = datasets["train"].train_batches(local_batch_size, seed=config.seed, start_step=start,
                                            shard_index=jax.process_index(), num_shards=jax.process_count())
    return (_global_batch(b, batch_sharding) for b in local)

  train_batches = batches(start_step)
  first_batch = next(train_batches)
  train_batches = itertools.chain([first_batch], train_batches)
  abstract_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding),
                                first_batch)

  plan = _plan_chunks(runners, config, abstract_batch, image_shape, mesh.devices.flat[0])
  for runner in runners:
    members = runner.spec.networks
    state = runner.init_state([position[n] for n in members], config.seed, image_shape)
    runner.chunks = []
    offset = 0
    for size, chunk_state in zip(plan[runner.spec.name], cohort_lib.split(state, plan[runner.spec.name])):
      spec = dataclasses.replace(runner.spec, networks=members[offset:offset + size])
      mask = jax.device_put(jnp.asarray(spec.task_mask(), jnp.bool_), replicated)
      runner.chunks.append(_Chunk(spec.networks, mask, chunk_state))
      offset += size
    logging.info("cohort %s: %d networks over tasks %s, %s per step", runner.spec.name, len(members),
                 "+".join(runner.spec.tasks), "/".join(map(str, plan[runner.spec.name])))

  tag_meter = None
  if measured_by_tag in my_networks:  # in an array job, only the shard that trains it measures
    runner, = [r for r in runners if measured_by_tag in r.spec.networks]
    tag_meter = _TagMeter(measured_by_tag, runner, image_shape, config.tag.every_steps,
                          config.optimizer.learning_rate, replicated)

  def full_states() -> dict[str, Any]:
    """Everything the checkpoint holds: every cohort's state, and TAG's affinity sum."""
    states: dict[str, Any] = {r.spec.name: cohort_lib.concatenate([c.state for c in r.chunks]) for r in runners}
    if tag_meter:
      states[TAG_STATE] = tag_meter.affinity
    return states

  def set_full_states(states: Mapping[str, Any]) -> None:
    for runner in runners:
      sizes = [len(c.networks) for c in runner.chunks]
      for chunk, state in zip(runner.chunks, cohort_lib.split(states[runner.spec.name], sizes)):
        chunk.state = jax.device_put(state, replicated)
    if tag_meter:
      tag_meter.affinity = jax.device_put(states[TAG_STATE], replicated)

  names = [n.name for n in my_networks]
  if start_step:
    restored, progress = checkpointer.restore(start_step, full_states())
    if progress.get("networks") != names:
      raise checkpoints.ConfigMismatchError(
          f"the checkpoint in {workdir} holds networks {progress.get('networks')} but this run trains {names}; "
          f"pass the same --shard_index/--num_shards as the run that made it, or a new --workdir")
    set_full_states(restored)
    logging.info("resumed from step %d of %s", start_step, workdir)

  run_log = results.RunLog(paths.log, start_step if start_step else None) if is_writer else None
  scalars = results.Scalars(paths.tensorboard) if is_writer else None
  constants = baseline.fit(datasets["train"].eval_batches(local_eval_batch_size), config.tasks,
                           max_batches=config.baseline_batches)
  constant_losses = {split: baseline.losses(datasets[split].eval_batches(local_eval_batch_size), constants)
                     for split in (VALIDATION, "test")}

  reported_diverged: set[str] = set()

  def tracker(name: str) -> dict[str, np.ndarray]:
    """Host copies of a tracker field, per network name."""
    values = {}
    for runner in runners:
      for chunk in runner.chunks:
        array = np.asarray(jax.device_get(getattr(chunk.state, name)))
        for i, network in enumerate(chunk.networks):
          values[network.name] = (runner.spec.tasks, array[i])
    return values

  def report_divergence(step: int) -> None:
    for name, (_, diverged_step) in tracker("diverged_step").items():
      if diverged_step != cohort_lib.NOT_YET and name not in reported_diverged:
        reported_diverged.add(name)
        logging.warning("network %s diverged (loss not finite) at step %d; it is stopped and left out of "
                        "the results tables; the other networks train on", name, int(diverged_step))
        if run_log:
          run_log.write("diverged", step, network=name, diverged_step=int(diverged_step))

  def evaluate(split: str, use_best: bool) -> dict[str, dict[str, float]]:
    """Mean loss of every network on each of its tasks on ``split`` (one pass over the split)."""
    chunks = [(runner, chunk) for runner in runners for chunk in runner.chunks]
    sums = [None] * len(chunks)
    weight = 0.0
    for local in datasets[split].eval_batches(local_eval_batch_size, shard_index=jax.process_index(),
                                              num_shards=jax.process_count()):
      batch = _global_batch(local, batch_sharding)
      for i, (runner, chunk) in enumerate(chunks):
        state = chunk.state
        chunk_sums, batch_weight = runner.eval_sums(state.best_params if use_best else state.params,
                                                    state.best_batch_stats if use_best else state.batch_stats, batch)
        sums[i] = chunk_sums if sums[i] is None else sums[i] + chunk_sums
      weight += float(batch_weight)
    losses = {}
    for (runner, chunk), chunk_sums in zip(chunks, sums):
      means = np.asarray(jax.device_get(chunk_sums)) / weight
      for network, row in zip(chunk.networks, means):
        losses[network.name] = {t: float(v) for t, v in zip(runner.spec.tasks, row) if t in network.tasks}
    return losses

  def validate(step: int) -> dict[str, dict[str, float]]:
    losses = evaluate(VALIDATION, use_best=False)
    for runner in runners:
      for chunk in runner.chunks:
        matrix = jnp.asarray([[losses[n.name].get(t, jnp.inf) for t in runner.spec.tasks] for n in chunk.networks],
                             jnp.float32)
        chunk.state = runner.record_validation(chunk.state, jax.device_put(matrix, replicated),
                                               jnp.int32(step), jnp.bool_(step == schedule.esa_step), chunk.task_mask)
    return losses

  # The selector's tables hold the paper's candidates, equal-weight networks; networks with a
  # method go to results/methods.json.
  table_networks = [n for n in my_networks if not n.method]
  method_networks = [n for n in my_networks if n.method]

  def rows(field: str) -> list[tuple[tuple[str, ...], float, dict[str, float]]]:
    """Table rows of a ``[nets, tasks]`` tracker, healthy equal-weight networks only."""
    diverged, values = tracker("diverged_step"), tracker(field)
    table_rows = []
    for network in table_networks:
      if diverged[network.name][1] == cohort_lib.NOT_YET:
        tasks, row = values[network.name]
        table_rows.append((network.tasks, costs[network],
                           {t: float(v) for t, v in zip(tasks, row) if t in network.tasks}))
    return table_rows

  def write_table(split: str, table_rows) -> None:
    table = results.results_table(config.tasks, table_rows, split)
    if table is not None and is_writer:
      paths.write_table(split, table)

  def save(step: int) -> None:
    checkpointer.save(step, full_states(), {"step": step, "networks": names})

  stop = _StopRequest()
  progress = results.Progress(start_step, schedule.stop_step)
  status = STATUS_COMPLETE
  step = start_step
  all_chunks = [chunk for runner in runners for chunk in runner.chunks]
  loss_sums: list[Any] = [None] * len(all_chunks)  # per chunk, [nets] summed since the last log line
  scales: list[Any] = [None] * len(all_chunks)      # per chunk, [nets] learning-rate multipliers
  task_weights: list[Any] = [None] * len(all_chunks)  # per chunk, [nets, tasks] this step's loss weights
  loss_count = 0
  try:
    while step < schedule.stop_step:
      batch = next(train_batches)
      if tag_meter:
        tag_meter.measure(step, batch)
      step_array = jax.device_put(jnp.int32(step), replicated)
      metrics = [m for runner in runners for m in runner.train(batch, step_array, abstract_batch, image_shape)]
      for i, chunk_metrics in enumerate(metrics):
        loss_sums[i] = chunk_metrics["loss"] if loss_sums[i] is None else loss_sums[i] + chunk_metrics["loss"]
        scales[i] = chunk_metrics["learning_rate_scale"]
        task_weights[i] = chunk_metrics["task_weight"]
      loss_count += 1
      step += 1
      if step == start_step + 1:
        jax.block_until_ready(loss_sums)
        progress.start_timing(step)

      if step % config.log_every_steps == 0 or step == schedule.stop_step:
        train_losses, learning_rates, method_weights = {}, {}, {}
        for chunk, chunk_sum, chunk_scale, chunk_weights in zip(all_chunks, jax.device_get(loss_sums),
                                                                jax.device_get(scales), jax.device_get(task_weights)):
          for network, value, scale, weights in zip(chunk.networks, chunk_sum / loss_count, chunk_scale, chunk_weights):
            train_losses[network.name] = float(value)
            learning_rates[network.name] = float(scale) * config.optimizer.learning_rate
            if network.method and network.method != networks_lib.SOFT_SHARING:
              method_weights[network.name] = {t: float(w) for t, w in zip(network.tasks, weights)}
        loss_sums, loss_count = [None] * len(all_chunks), 0
        report_divergence(step)
        finite = [v for v in train_losses.values() if math.isfinite(v)]
        logging.info(progress.line(step, f"train loss (mean of {len(finite)} networks) "
                                         f"{np.mean(finite) if finite else float('nan'):.4f}"))
        if run_log:
          run_log.write("train", step, loss=train_losses, learning_rate=learning_rates,
                        **({"task_weight": method_weights} if method_weights else {}))
          scalars.write(step, {**{f"train/{n}/loss": v for n, v in train_losses.items()},
                               **{f"learning_rate/{n}": v for n, v in learning_rates.items()}})

      if step in schedule.eval_steps:
        val_losses = validate(step)
        report_divergence(step)
        save(step)
        write_table("val", rows("best_task_loss"))
        if step >= schedule.esa_step:
          write_table("esa", rows("esa_loss"))
        if run_log:
          run_log.write("eval", step, split="val", loss=val_losses)
          scalars.write(step, {f"val/{n}/{t}": v for n, per_task in val_losses.items() for t, v in per_task.items()})
        logging.info("validated at step %d: mean loss %s", step,
                     ", ".join(f"{n} {np.mean(list(v.values())):.4f}" for n, v in val_losses.items()))

      if step < schedule.stop_step and stop.agreed(step, config.log_every_steps):
        if checkpointer.latest_step() != step:  # validation may just have saved this step
          save(step)
        status = STATUS_PREEMPTED
        if run_log:
          run_log.write("preempted", step)
        logging.warning("checkpoint saved at step %d; rerun the same command to resume", step)
        break
  finally:
    stop.restore()

  summary: dict[str, Any] = {"status": status, "step": step, "workdir": workdir}
  if status == STATUS_COMPLETE:
    test_losses = evaluate("test", use_best=True)
    diverged = tracker("diverged_step")
    write_table("test", [(n.tasks, costs[n], test_losses[n.name]) for n in table_networks
                         if diverged[n.name][1] == cohort_lib.NOT_YET])
    run = records.RunRecord(_network_records(my_networks, costs, tracker, test_losses, constant_losses),
                            constant_losses, schedule)
    summary["run"] = run
    if is_writer:
      paths.write_run(run)
      if method_networks:
        workdir_lib.write_json(paths.methods, _method_summaries(run.networks, schedule.stop_step))
      if tag_meter:
        summary["tag"] = tag_meter.summary(schedule.stop_step)
        workdir_lib.write_json(paths.tag, summary["tag"])
      run_log.write("done", step)
  checkpointer.close()
  if run_log:
    run_log.close()
    scalars.close()
  return summary


def _method_summaries(network_records: Sequence[records.NetworkRecord], network_steps: int) -> dict[str, Any]:
  """``results/methods.json``: per trained network with a method, the validation and test losses of
  its reported checkpoint (the tables' conventions)."""
  methods = {}
  for entry in network_records:
    if not entry.method:
      continue
    if entry.status != records.TRAINED:
      logging.warning("network %s diverged; it is left out of methods.json", entry.name)
      continue
    methods[entry.name] = {"method": entry.method, "tasks": list(entry.tasks), "size": entry.size,
                           "cost": entry.cost, "val": entry.val, "test": entry.test, "network_steps": network_steps}
  return methods


def _network_records(networks: Sequence[networks_lib.Network], costs: Mapping[networks_lib.Network, float], tracker,
                     test_losses: Mapping[str, Mapping[str, float]],
                     constant_losses: Mapping[str, Mapping[str, float]]) -> tuple[records.NetworkRecord, ...]:
  """Per network: what it is, whether it diverged, its losses and its improvement over the constant."""
  fields = {name: tracker(name) for name in ("best_task_loss", "task_peak_loss", "task_peak_step", "esa_loss",
                                              "best_step", "diverged_step")}
  entries = []
  for network in networks:
    tasks, _ = fields["best_task_loss"][network.name]
    per_task = lambda field: {t: v.item() for t, v in zip(tasks, fields[field][network.name][1]) if t in network.tasks}
    diverged_step = int(fields["diverged_step"][network.name][1])
    val, test = per_task("best_task_loss"), dict(test_losses[network.name])
    # 1 - loss / constant loss: 0 is no better than predicting the training mean, 1 is perfect.
    improvement = {key: {t: 1.0 - losses[t] / constant_losses[split][t] for t in network.tasks}
                   for split, key, losses in ((VALIDATION, "val", val), ("test", "test", test))}
    entries.append(records.NetworkRecord(
        name=network.name, tasks=network.tasks, size=network.size, method=network.method, cost=costs[network],
        status=records.DIVERGED if diverged_step != cohort_lib.NOT_YET else records.TRAINED,
        diverged_step=diverged_step if diverged_step != cohort_lib.NOT_YET else None,
        best_step=int(fields["best_step"][network.name][1]), val=val, test=test, esa=per_task("esa_loss"),
        val_peak=per_task("task_peak_loss"),
        val_peak_step={t: int(s) for t, s in per_task("task_peak_step").items()},
        improvement_over_constant=improvement))
  return tuple(entries)
