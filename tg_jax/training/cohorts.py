"""A run's cohorts on device: their models, compiled steps and the states of their networks.

``cohort`` holds the pure maths of one cohort (init, train step, validation trackers); this module
holds what a run keeps between steps. A cohort (``networks.Cohort``: networks of one size, method
and seed over one model) has a ``CohortRunner`` (its model and jitted functions); its networks are
split into ``Chunk``s, each trained by one call of the compiled step (``planning`` sizes them to fit
in memory). ``Cohorts`` owns every chunk's ``CohortState`` and is the only thing that changes them:
training, validation, checkpoints and host copies of the trackers all go through it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any, Iterable, Mapping, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from tg_jax import balancing
from tg_jax import models
from tg_jax import records
from tg_jax.training import cohort as cohort_lib
from tg_jax.training import networks as networks_lib

Batch = Mapping[str, jax.Array]
# XLA options of the networks' initialiser (see ``CohortRunner``): compiled for speed of compiling.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
# Per network name, per task: ``[examples]`` float32 losses over an evaluation split, in its order.
ExampleLosses = dict[str, dict[str, np.ndarray]]


def network_rng(seed: int, position: int, replica_seed: int) -> jax.Array:
  """A network's initialisation key: ``fold_in(PRNGKey(seed), position)`` (``position``: its place in
  the one-seed network list, ``networks.positions``), with ``replica_seed`` folded in for replicas
  other than seed 0, so seed 0 is initialised exactly as a one-seed run's network."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), position)
  return jax.random.fold_in(key, replica_seed) if replica_seed else key


def method_model_config(model_config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  """The model config of networks trained with ``method``: for an architecture
  (``records.ARCHITECTURES``), that family on ``model_config``'s encoder (``models.as_family``)."""
  return models.as_family(model_config, method) if method in records.ARCHITECTURES else model_config


def build_model(spec: networks_lib.Cohort, model_config: ml_collections.ConfigDict, dtype: Any = jnp.float32):
  """The model a cohort's networks share: decoders for its tasks; for soft sharing, one
  single-task network per task (``cohort.SoftSharedNetworks``); for an architecture, that family's."""
  if spec.method == networks_lib.SOFT_SHARING:
    return cohort_lib.SoftSharedNetworks(tuple(models.build(model_config, (t,), spec.size, dtype) for t in spec.tasks))
  return models.build(method_model_config(model_config, spec.method), spec.tasks, spec.size, dtype)


def make_balancer(method: str, config: ml_collections.ConfigDict, steps_per_epoch: int):
  """``balancing.get(method, **config.balancing_options[method])``; DWA's period defaults to one
  validation period, the paper's epoch."""
  options = dict(config.balancing_options.get(method, {}))
  if method == "dwa":
    options.setdefault("period", steps_per_epoch)
  return balancing.get(method, **options)


def parallelism(config: ml_collections.ConfigDict, spec: networks_lib.Cohort, platform: str) -> str:
  """How a step runs the cohort's networks: ``config.network_parallelism``, or the platform's choice."""
  if config.network_parallelism == "auto":
    return cohort_lib.choose_parallelism(platform, len(spec.networks))
  return config.network_parallelism


class CohortRunner:
  """One cohort's model and jitted functions (train step compiled per chunk size, evaluation,
  validation trackers); the states they run on live in ``Chunk``s."""

  def __init__(self, spec: networks_lib.Cohort, config: ml_collections.ConfigDict, steps_per_epoch: int,
               image_shape: Sequence[int], optimizer, dtype: Any, how: str, replicated: NamedSharding,
               batch_sharding: NamedSharding):
    self.spec = spec
    self.how = how
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
    elif spec.method == networks_lib.TRANSFER:
      gradient_fn = cohort_lib.frozen_encoder_gradients(model=self.model, task_names=task_names)
    elif spec.method in balancing.names():
      self.balancer = make_balancer(spec.method, config, steps_per_epoch)
      gradient_fn = cohort_lib.balanced_gradients(
          model=self.model, task_names=task_names, balancer=self.balancer,
          shared_names=cohort_lib.shared_parameter_names(self.model, image_shape),
          needs_task_gradients=balancing.needs_task_gradients(spec.method))

    def train_step(state, batch, step, task_mask):
      return cohort_lib.train_step(state, batch, step, model=self.model, optimizer=optimizer,
                                   task_names=task_names, task_mask=task_mask, how=how, gradient_fn=gradient_fn)

    # Networks trained with the paper's equal weights evaluate their own tasks' decoders only, as
    # they train (``cohort.eval_losses``); the other gradient functions' models carry no unused ones.
    skip_untrained = gradient_fn is None

    def eval_sums(params, batch_stats, batch, task_mask):
      return (cohort_lib.eval_loss_sums(params, batch_stats, batch, model=self.model, task_names=task_names,
                                        how=how, task_mask=task_mask if skip_untrained else None),
              jnp.sum(batch["weight"]))

    def eval_examples(params, batch_stats, batch, task_mask):
      sums, losses = cohort_lib.eval_losses(params, batch_stats, batch, model=self.model, task_names=task_names,
                                            how=how, task_mask=task_mask if skip_untrained else None)
      return sums, jnp.sum(batch["weight"]), losses, batch["weight"]

    self._train_step = jax.jit(train_step, in_shardings=(replicated, batch_sharding, replicated, replicated),
                               out_shardings=replicated, donate_argnums=0)
    self.eval_sums = jax.jit(eval_sums, in_shardings=(replicated, replicated, batch_sharding, replicated),
                             out_shardings=replicated)
    # The same sums, plus ``[nets, tasks, batch]`` per-example losses and the ``[batch]`` weights.
    self.eval_examples = jax.jit(eval_examples, in_shardings=(replicated, replicated, batch_sharding, replicated),
                                 out_shardings=replicated)
    self.record_validation = jax.jit(cohort_lib.record_validation, out_shardings=replicated, donate_argnums=0)
    # One network's initial state from its ``[1]`` key: one jitted function per model, so another
    # seed's cohort (``with_spec``) and every network reuse its compiled program. It runs once per
    # network, so it is compiled without optimisation: ~4x faster to compile on CPU, where every
    # parameter's random-number generator is compiled separately (values differ from an optimised
    # build's in the last bits, and are the same on every run).
    self._init = functools.partial(cohort_lib.init, self.model, optimizer, image_shape=tuple(image_shape),
                                   num_tasks=len(task_names), balancer=self.balancer)
    self._init_one = jax.jit(self._init, compiler_options=INIT_COMPILER_OPTIONS)
    self._compiled: dict[int, Any] = {}
    self._abstract_states: dict[int, cohort_lib.CohortState] = {}

  @staticmethod
  def program_key_of(spec: networks_lib.Cohort, how: str) -> tuple[Any, ...]:
    """What the compiled programs of a runner for ``spec`` run ``how`` depend on: runners with equal keys
    can share them (``with_spec``)."""
    return (spec.size, spec.method, spec.tasks, how)

  @property
  def program_key(self) -> tuple[Any, ...]:
    return self.program_key_of(self.spec, self.how)

  def with_spec(self, spec: networks_lib.Cohort) -> "CohortRunner":
    """This runner for another cohort of the same model (size, method and tasks; another seed's
    replicas): the jitted functions and compiled steps are shared, so replicas compile nothing more."""
    if (spec.size, spec.method, spec.tasks) != (self.spec.size, self.spec.method, self.spec.tasks):
      raise ValueError(f"cohort {spec.name} over {spec.tasks} cannot share the model of cohort {self.spec.name} "
                       f"over {self.spec.tasks}")
    runner = copy.copy(self)  # shares the model, the jitted functions and the cache of compiled steps
    runner.spec = spec
    return runner

  def init_state(self, rngs: Sequence[jax.Array], image_shape: Sequence[int]) -> cohort_lib.CohortState:
    """State of networks initialised from ``rngs`` (one key each, ``network_rng``).

    Networks are initialised one at a time by one compiled function and then stacked: compiling
    the vmapped initialiser costs several times more on CPU, and the values are the same.
    """
    assert tuple(image_shape) == self._init.keywords["image_shape"], "the runner's own image shape"
    states = [self._init_one(rng[None]) for rng in rngs]
    return jax.device_put(cohort_lib.concatenate(states), self._replicated)

  def abstract_state(self, num_networks: int, image_shape: Sequence[int]) -> cohort_lib.CohortState:
    """Shapes, dtypes and shardings of the state of ``num_networks`` of this cohort's networks."""
    assert tuple(image_shape) == self._init.keywords["image_shape"], "the runner's own image shape"
    if num_networks not in self._abstract_states:  # tracing the initialiser takes a second or more
      shapes = jax.eval_shape(self._init, jax.ShapeDtypeStruct((num_networks, 2), jnp.uint32))
      self._abstract_states[num_networks] = jax.tree.map(
          lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self._replicated), shapes)
    return self._abstract_states[num_networks]

  def compiled_step(self, num_networks: int, abstract_batch: Any, image_shape: Sequence[int]):
    """The train step compiled for ``num_networks`` networks (cached)."""
    if num_networks not in self._compiled:
      state = self.abstract_state(num_networks, image_shape)
      step = jax.ShapeDtypeStruct((), jnp.int32, sharding=self._replicated)
      mask = jax.ShapeDtypeStruct((num_networks, len(self.spec.tasks)), jnp.bool_, sharding=self._replicated)
      self._compiled[num_networks] = self._train_step.lower(state, abstract_batch, step, mask).compile()
    return self._compiled[num_networks]


def make_runners(specs: Sequence[networks_lib.Cohort], config: ml_collections.ConfigDict, steps_per_epoch: int,
                 image_shape: Sequence[int], optimizer, dtype: Any, platform: str, replicated: NamedSharding,
                 batch_sharding: NamedSharding) -> list[CohortRunner]:
  """One runner per cohort; cohorts of one model run the same way (another seed's replicas of a
  cohort) share one runner's compiled functions (``CohortRunner.with_spec``)."""
  runners: list[CohortRunner] = []
  for spec in specs:
    how = parallelism(config, spec, platform)
    twin = next((r for r in runners if r.program_key == CohortRunner.program_key_of(spec, how)), None)
    runners.append(twin.with_spec(spec) if twin else CohortRunner(
        spec, config, steps_per_epoch, image_shape, optimizer, dtype, how, replicated, batch_sharding))
  return runners


@dataclasses.dataclass
class Chunk:
  """Networks trained by one call of their cohort's step, with their state on device.

  Attributes:
    runner: the cohort's runner; ``runner.spec.tasks`` are the columns of ``[nets, tasks]`` arrays.
    networks: the chunk's networks, in the cohort's order.
    task_mask: ``[nets, tasks]`` bool: whether each network trains each of the cohort's tasks.
    state: the networks' ``CohortState`` (``[nets, ...]`` leaves), replaced by every step.
  """

  runner: CohortRunner
  networks: tuple[networks_lib.Network, ...]
  task_mask: jax.Array
  state: cohort_lib.CohortState


class Cohorts:
  """Every chunk of a run's cohorts and its networks' state on device.

  Attributes:
    runners: one per cohort, in ``networks.cohorts`` order (a checkpoint holds one state per cohort).
    chunks: every cohort's chunks, cohort after cohort: the order of ``train``'s metrics.
  """

  def __init__(self, runners: Sequence[CohortRunner], chunk_sizes: Mapping[str, Sequence[int]],
               positions: Mapping[networks_lib.Network, int], seed: int, image_shape: Sequence[int],
               abstract_batch: Any, replicated: NamedSharding):
    """Initialises every network from ``seed``, its position and its replica seed (``network_rng``).

    Args:
      runners: the cohorts' runners.
      chunk_sizes: per cohort name, how many networks each of its chunks trains (``planning``).
      positions: each network's index in the experiment's one-seed network list (all shards;
        ``networks.positions``).
      seed: the experiment's seed.
      image_shape: ``[h, w, c]`` of the input images.
      abstract_batch: shapes and shardings of one global training batch (the steps compile for it).
      replicated: the sharding of states, steps and masks.
    """
    self.runners = tuple(runners)
    self._image_shape = tuple(image_shape)
    self._abstract_batch = abstract_batch
    self._replicated = replicated
    self.chunks: list[Chunk] = []
    for runner in self.runners:
      members, sizes = runner.spec.networks, list(chunk_sizes[runner.spec.name])
      state = runner.init_state([network_rng(seed, positions[n], n.seed) for n in members], image_shape)
      offset = 0
      for size, chunk_state in zip(sizes, cohort_lib.split(state, sizes)):
        spec = dataclasses.replace(runner.spec, networks=members[offset:offset + size])
        mask = jax.device_put(jnp.asarray(spec.task_mask(), jnp.bool_), replicated)
        self.chunks.append(Chunk(runner, spec.networks, mask, chunk_state))
        offset += size
      logging.info("cohort %s: %d networks over tasks %s, %s per step", runner.spec.name, len(members),
                   "+".join(runner.spec.tasks), "/".join(map(str, sizes)))

  def _chunks_of(self, runner: CohortRunner) -> list[Chunk]:
    return [chunk for chunk in self.chunks if chunk.runner is runner]

  def chunk_of(self, network: networks_lib.Network) -> Chunk:
    """The chunk that trains ``network``."""
    chunk, = [chunk for chunk in self.chunks if network in chunk.networks]
    return chunk

  @property
  def seeds(self) -> tuple[int, ...]:
    """The replica seeds of the networks, in cohort order: the batch streams ``train`` needs."""
    return tuple(dict.fromkeys(runner.spec.seed for runner in self.runners))

  def train(self, batches: Mapping[int, Batch], step: int) -> list[dict[str, jax.Array]]:
    """One training step of every network on its seed's global batch (``batches``: per replica
    seed); per chunk, the step's metrics (``cohort.train_step``'s: ``loss`` ``[nets]``,
    ``learning_rate_scale`` ``[nets]``, ``task_weight`` ``[nets, tasks]``, ...)."""
    step_array = jax.device_put(jnp.int32(step), self._replicated)
    metrics = []
    for chunk in self.chunks:
      compiled = chunk.runner.compiled_step(len(chunk.networks), self._abstract_batch, self._image_shape)
      chunk.state, chunk_metrics = compiled(chunk.state, batches[chunk.runner.spec.seed], step_array,
                                            chunk.task_mask)
      metrics.append(chunk_metrics)
    return metrics

  def evaluate(self, batches: Iterable[Batch], use_best: bool) -> dict[str, dict[str, float]]:
    """``{network name: {task: mean loss}}`` of every network on each of its tasks over ``batches``
    (global evaluation batches, padding weighted 0), with its current or its best-validation state."""
    return self._evaluate(batches, use_best, per_example=False)[0]

  def evaluate_examples(self, batches: Iterable[Batch],
                        use_best: bool) -> tuple[dict[str, dict[str, float]], ExampleLosses]:
    """``evaluate``'s mean losses and, from the same pass, every network's per-example losses on
    each of its tasks (``ExampleLosses``; padding dropped). Slower than ``evaluate`` (the losses come
    back to the host), so only the final passes take them."""
    return self._evaluate(batches, use_best, per_example=True)

  def _evaluate(self, batches: Iterable[Batch], use_best: bool,
                per_example: bool) -> tuple[dict[str, dict[str, float]], Optional[ExampleLosses]]:
    sums: list[Any] = [None] * len(self.chunks)  # per chunk, [nets, tasks] weighted loss sums
    per_batch: list[list[jax.Array]] = [[] for _ in self.chunks]  # per chunk, per batch [nets, tasks, batch]
    batch_weights: list[jax.Array] = []  # per batch, [batch]
    weight = 0.0
    for batch in batches:
      for i, chunk in enumerate(self.chunks):
        state = chunk.state
        variables = ((state.best_params, state.best_batch_stats) if use_best else (state.params, state.batch_stats))
        if per_example:
          chunk_sums, batch_weight, chunk_losses, weights = chunk.runner.eval_examples(*variables, batch, chunk.task_mask)
          per_batch[i].append(chunk_losses)
        else:
          chunk_sums, batch_weight = chunk.runner.eval_sums(*variables, batch, chunk.task_mask)
        sums[i] = chunk_sums if sums[i] is None else sums[i] + chunk_sums
      weight += float(batch_weight)
      if per_example:
        batch_weights.append(weights)
    losses = {}
    for chunk, chunk_sums in zip(self.chunks, sums):
      means = np.asarray(jax.device_get(chunk_sums)) / weight
      for network, row in zip(chunk.networks, means):
        losses[network.name] = {t: float(v) for t, v in zip(chunk.runner.spec.tasks, row) if t in network.tasks}
    if not per_example:
      return losses, None
    real = np.concatenate(jax.device_get(batch_weights)) > 0
    examples: ExampleLosses = {}
    for chunk, chunk_batches in zip(self.chunks, per_batch):
      values = np.concatenate(jax.device_get(chunk_batches), axis=-1)[..., real]  # [nets, tasks, examples]
      for network, row in zip(chunk.networks, values):
        examples[network.name] = {t: np.asarray(v, np.float32) for t, v in zip(chunk.runner.spec.tasks, row)
                                  if t in network.tasks}
    return losses, examples

  def validate(self, batches: Iterable[Batch], step: int, record_esa: bool) -> dict[str, dict[str, float]]:
    """Evaluates the current states on the validation ``batches`` and updates the best-so-far
    trackers (``cohort.record_validation``; ``record_esa``: this is the ESA table's validation).
    Returns the losses, as ``evaluate``."""
    losses = self.evaluate(batches, use_best=False)
    for chunk in self.chunks:
      matrix = jnp.asarray([[losses[n.name].get(t, jnp.inf) for t in chunk.runner.spec.tasks]
                            for n in chunk.networks], jnp.float32)
      chunk.state = chunk.runner.record_validation(chunk.state, jax.device_put(matrix, self._replicated),
                                                   jnp.int32(step), jnp.bool_(record_esa), chunk.task_mask)
    return losses

  def full_state(self) -> dict[str, cohort_lib.CohortState]:
    """Each cohort's state (its chunks joined), by cohort name: what a checkpoint holds of them."""
    return {runner.spec.name: cohort_lib.concatenate([c.state for c in self._chunks_of(runner)])
            for runner in self.runners}

  def load_state(self, states: Mapping[str, cohort_lib.CohortState]) -> None:
    """The inverse of ``full_state``: splits each cohort's state into its chunks, on device."""
    for runner in self.runners:
      chunks = self._chunks_of(runner)
      for chunk, state in zip(chunks, cohort_lib.split(states[runner.spec.name], [len(c.networks) for c in chunks])):
        chunk.state = jax.device_put(state, self._replicated)

  def load_encoders(self, encoders: Mapping[networks_lib.Network, Mapping[str, Any]]) -> None:
    """Sets each given network's encoder, current and best-validation copies alike, to
    ``encoders[network]`` (one network's ``{"params": ..., "batch_stats": ...}``, e.g. another run's
    checkpoint; only the encoder's collections are read): how transfer networks start.

    Raises a ValueError naming the network when the given encoder's shapes differ from its own.
    """
    for chunk in self.chunks:
      rows = {row: encoders[n] for row, n in enumerate(chunk.networks) if n in encoders}
      if not rows:
        continue
      names = cohort_lib.shared_parameter_names(chunk.runner.model, self._image_shape)

      def replaced(tree: Any, collection: str) -> Any:
        tree = dict(tree)
        for name in names:
          if name not in tree:
            continue
          for row, variables in rows.items():
            given = variables[collection][name]
            own = jax.tree.map(lambda leaf: leaf[row], tree[name])
            if jax.tree.structure(given) != jax.tree.structure(own) or any(
                np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(given), jax.tree.leaves(own))):
              raise ValueError(f"network {chunk.networks[row].name}: the encoder given for it ({collection}/{name}) "
                               f"has other shapes than its own; its source must be a network of the same model "
                               f"and size")
            tree[name] = jax.tree.map(lambda leaf, value, row=row: leaf.at[row].set(value.astype(leaf.dtype)),
                                      tree[name], given)
        return tree

      state = chunk.state
      chunk.state = jax.device_put(state.replace(
          params=replaced(state.params, "params"), best_params=replaced(state.best_params, "params"),
          batch_stats=replaced(state.batch_stats, "batch_stats"),
          best_batch_stats=replaced(state.best_batch_stats, "batch_stats")), self._replicated)

  def network_values(self, field: str) -> dict[str, np.ndarray]:
    """Host copy of a ``[nets]`` ``CohortState`` field (``best_step``, ``diverged_step``): each
    network's value, by name."""
    return {network.name: value for chunk in self.chunks
            for network, value in zip(chunk.networks, np.asarray(jax.device_get(getattr(chunk.state, field))))}

  def task_values(self, field: str) -> dict[str, dict[str, np.ndarray]]:
    """Host copy of a ``[nets, tasks]`` ``CohortState`` field (``best_task_loss``, ``esa_loss``, ...):
    ``{name: {task: value}}`` over each network's own tasks."""
    values = {}
    for chunk in self.chunks:
      for network, row in zip(chunk.networks, np.asarray(jax.device_get(getattr(chunk.state, field)))):
        values[network.name] = {t: v for t, v in zip(chunk.runner.spec.tasks, row) if t in network.tasks}
    return values
