"""Pure functions that train and evaluate a cohort: networks of one size stacked on a leading axis.

Every network of a cohort is built from the same model (one decoder per task of the cohort's task
union) and trained on the same batch by one vmapped step. A network's loss is the unweighted mean of
its own tasks' losses; the other decoders are masked out with ``jnp.where`` so they receive exactly
zero gradient (and, with SGD, never move). Arrays carry the network axis first:
``[nets, ...]`` for parameters and optimiser state, ``[nets, tasks]`` for per-task numbers.

How a network's gradient is formed is the step's ``gradient_fn`` (``Gradients``): the paper's equal
weights (``equal_weight_gradients``), a ``tg_jax.balancing`` method (``balanced_gradients``),
soft parameter sharing (``soft_sharing_gradients`` on a ``SoftSharedNetworks`` model), or decoders
on a frozen encoder (``frozen_encoder_gradients``: transfer networks).

Nothing here has side effects; ``trainer`` jits these functions and runs the loop around them.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from tg_jax import balancing
from tg_jax import tasks as tasks_lib

Batch = Mapping[str, jax.Array]
NOT_YET = -1  # step value of a tracker that has not fired (no best checkpoint, not diverged)
VMAP, LOOP = "vmap", "loop"


def over_networks(fn, how: str):
  """``fn`` mapped over the leading (network) axis of all its arguments.

  ``"vmap"`` batches the networks into one computation (fast on accelerators); ``"loop"`` runs them
  one after another inside the same compiled step with ``lax.map``: XLA's CPU backend turns vmapped
  convolutions with per-network kernels into grouped convolutions that run tens of times slower
  than the networks one by one. Both compute the same values.
  """
  if how == VMAP:
    return jax.vmap(fn)
  if how == LOOP:
    return lambda *args: jax.lax.map(lambda xs: fn(*xs), args)
  raise ValueError(f"unknown way to run a cohort's networks {how!r}; use {VMAP!r} or {LOOP!r}")


def choose_parallelism(platform: str, num_networks: int) -> str:
  """How ``network_parallelism="auto"`` runs ``num_networks`` networks of a step on ``platform``.

  ``"loop"`` on CPU, ``"vmap"`` elsewhere; ``benchmarks/train_step.py`` measures both (and one jitted
  step per network) and reports this choice beside the fastest it measured.
  """
  del num_networks  # Measured so far: the choice depends on the platform only (docs/performance.md).
  return LOOP if platform == "cpu" else VMAP


@flax.struct.dataclass
class CohortState:
  """Training state of a cohort's networks, every leaf with a leading ``[nets]`` axis.

  Attributes:
    params, batch_stats, opt_state: what the networks train with.
    best_params, best_batch_stats: each network's best-validation checkpoint.
    best_loss: ``[nets]`` validation loss (mean over the network's tasks) of that checkpoint.
    best_step: ``[nets]`` step of that checkpoint (``NOT_YET`` before the first validation).
    best_task_loss: ``[nets, tasks]`` validation loss of each task at that checkpoint: what the
      results tables report, so validation and test come from the same parameters; ``inf`` for
      tasks a network does not train.
    task_peak_loss: ``[nets, tasks]`` lowest validation loss of each task over all validations
      (tasks peak at different times; no one checkpoint need reach them all).
    task_peak_step: ``[nets, tasks]`` step where each task's validation loss peaked.
    esa_loss: ``[nets, tasks]`` validation losses at the early-stopping-approximation step.
    diverged_step: ``[nets]`` step at which the network's loss became NaN or infinite; from then
      on the network is frozen. ``NOT_YET`` for healthy networks.
    balancer_state: the ``tg_jax.balancing`` state of each network (``[nets, ...]`` leaves); ``()``
      for cohorts without a balancer.
  """

  params: Any
  batch_stats: Any
  opt_state: Any
  best_params: Any
  best_batch_stats: Any
  best_loss: jax.Array
  best_step: jax.Array
  best_task_loss: jax.Array
  task_peak_loss: jax.Array
  task_peak_step: jax.Array
  esa_loss: jax.Array
  diverged_step: jax.Array
  balancer_state: Any = ()


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformationExtraArgs:
  """SGD with momentum whose learning rate is cut when the training loss stops falling.

  ``optax.contrib.reduce_on_plateau`` averages the training loss over ``steps_per_epoch`` steps
  (one validation period) and multiplies the updates by ``factor`` after ``patience`` such periods
  without improvement. Its ``update`` needs the loss: ``tx.update(grads, state, params, value=loss)``.
  """
  return optax.chain(
      optax.sgd(config.learning_rate, momentum=config.momentum or None, nesterov=config.nesterov),
      optax.contrib.reduce_on_plateau(
          factor=config.plateau_factor, patience=config.plateau_patience, rtol=config.plateau_rtol,
          cooldown=config.plateau_cooldown, accumulation_size=steps_per_epoch,
          min_scale=config.min_learning_rate / config.learning_rate),
  )


def learning_rate_scale(opt_state: Any) -> jax.Array:
  """``[nets]`` current multiplier of the base learning rate, from ``make_optimizer``'s state."""
  return opt_state[1].scale


# Folded into a network's key for its balancer's random choices, apart from its initialisation's.
_BALANCER_STREAM = 0x6261


def init(model: nn.Module, optimizer: optax.GradientTransformation, rngs: jax.Array,
         image_shape: Sequence[int], num_tasks: int,
         balancer: Optional[balancing.Balancer] = None) -> CohortState:
  """Initial state of ``len(rngs)`` networks; network ``i`` is initialised from ``rngs[i]``, and its
  balancer's random choices follow a key derived from it (``balancing.reseeded``).

  Flax derives each submodule's initialiser from the rng and the submodule's name, so a network's
  encoder and decoders are the same whichever other decoders the cohort's model carries.
  """
  images = jnp.zeros((1, *image_shape), jnp.float32)

  def init_one(rng):
    variables = model.init(rng, images, train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    return params, batch_stats, optimizer.init(params)

  params, batch_stats, opt_state = jax.vmap(init_one)(rngs)
  num_networks = rngs.shape[0]
  return CohortState(
      params=params, batch_stats=batch_stats, opt_state=opt_state,
      best_params=params, best_batch_stats=batch_stats,
      best_loss=jnp.full((num_networks,), jnp.inf, jnp.float32),
      best_step=jnp.full((num_networks,), NOT_YET, jnp.int32),
      best_task_loss=jnp.full((num_networks, num_tasks), jnp.inf, jnp.float32),
      task_peak_loss=jnp.full((num_networks, num_tasks), jnp.inf, jnp.float32),
      task_peak_step=jnp.full((num_networks, num_tasks), NOT_YET, jnp.int32),
      esa_loss=jnp.full((num_networks, num_tasks), jnp.inf, jnp.float32),
      diverged_step=jnp.full((num_networks,), NOT_YET, jnp.int32),
      balancer_state=(jax.vmap(lambda rng: balancing.reseeded(
          balancer.init(num_tasks, _shared_like(model, image_shape, params)),
          jax.random.fold_in(rng, _BALANCER_STREAM)))(rngs) if balancer is not None else ()),
  )


def _shared_like(model: nn.Module, image_shape: Sequence[int], params: Any) -> dict:
  """Shapes of one network's shared parameters (``shared_parameter_names``; ``params`` has a leading
  ``[nets]`` axis), for a balancer's ``init``."""
  return {k: jax.tree_util.tree_map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype), params[k])
          for k in shared_parameter_names(model, image_shape)}


def task_losses(outputs: Mapping[str, jax.Array], batch: Batch, task_names: Sequence[str]) -> jax.Array:
  """``[tasks, batch]`` per-example loss of each task (``tg_jax.tasks`` losses)."""
  return jnp.stack([tasks_lib.get(t).loss(outputs[t], batch[t], batch.get(f"{t}_mask")) for t in task_names])


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of ``values[..., tasks]`` over the tasks where ``mask`` is true; others count exactly 0.

  ``jnp.where`` (not multiplication) keeps a NaN in a masked-out task out of the result and of
  the gradient.
  """
  return jnp.sum(jnp.where(mask, values, 0.0), axis=-1) / jnp.sum(mask, axis=-1)


def _decode_if_trained(model: nn.Module, params: Any, batch_stats: Any, representation: jax.Array, train: bool,
                       task: str, trained: jax.Array) -> tuple[jax.Array, Any]:
  """``model.decode(task, ...)`` when ``trained``, else zeros and unchanged batch statistics.

  ``lax.cond`` runs one branch where the predicate is a plain scalar (networks one after another,
  ``"loop"``), so a network pays for its own decoders only; under ``vmap`` both run, as before.
  """
  variables = {"params": params, "batch_stats": batch_stats}

  def decode(_):
    output, updates = model.apply(variables, task, representation, train, method=model.decode,
                                  mutable=["batch_stats"])
    return output, updates.get("batch_stats", batch_stats)

  output_shape = jax.eval_shape(decode, None)[0]
  skip = lambda _: (jnp.zeros(output_shape.shape, output_shape.dtype), batch_stats)
  return jax.lax.cond(trained, decode, skip, None)


def network_loss(params: Any, batch_stats: Any, mask: jax.Array, batch: Batch, *, model: nn.Module,
                 task_names: Sequence[str], skip_untrained: bool = False,
                 freeze_encoder: bool = False) -> tuple[jax.Array, tuple[jax.Array, Any]]:
  """One network's training loss on ``batch``: the mean of its own tasks' batch-mean losses.

  Args:
    params, batch_stats: one network's variables (no leading axis).
    mask: ``[tasks]`` bool, which of the model's decoders this network trains.
    batch: ``image`` ``[b, h, w, 3]`` and one label per task.
    skip_untrained: run the decoders of tasks outside ``mask`` under a ``lax.cond`` that skips them
      (their losses, masked out anyway, are then those of a zero output). Pays where networks run one
      after another (``"loop"``); the loss and gradients are the same either way.
    freeze_encoder (with ``skip_untrained``): the encoder runs in inference mode (its stored batch
      statistics) under ``stop_gradient``: it gets exactly zero gradient and its statistics stay.

  Returns:
    ``(loss, (per_task [tasks], new_batch_stats))``.
  """
  variables = {"params": params, "batch_stats": batch_stats}
  if skip_untrained:
    if freeze_encoder:
      representation = jax.lax.stop_gradient(model.apply(variables, batch["image"], False, method=model.encode))
      new_batch_stats = batch_stats
    else:
      representation, updates = model.apply(variables, batch["image"], True, method=model.encode,
                                            mutable=["batch_stats"])
      new_batch_stats = updates.get("batch_stats", batch_stats)
    outputs = {}
    for index, task in enumerate(task_names):
      outputs[task], new_batch_stats = _decode_if_trained(model, params, new_batch_stats, representation, True,
                                                          task, mask[index])
  else:
    outputs, updates = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
    new_batch_stats = updates.get("batch_stats", batch_stats)
  per_task = jnp.mean(task_losses(outputs, batch, task_names), axis=1)
  return masked_mean(per_task, mask), (per_task, new_batch_stats)


class Gradients(NamedTuple):
  """What a ``GradientFn`` returns for one network.

  Attributes:
    grads: the gradient the optimiser applies (the params' structure).
    loss: ``[]`` the network's training loss as logged and as the learning-rate schedule sees it:
      the mean of its tasks' losses (plus, for soft sharing, its penalty per task).
    per_task: ``[tasks]`` batch-mean loss of every task of the model.
    batch_stats: updated batch statistics.
    balancer_state: the balancer's new state (``()`` without one).
    weights: ``[tasks]`` each task loss's weight in ``grads`` (``grads`` = gradient of
      ``sum_t weights[t] * per_task[t]``, plus the soft-sharing penalty's).
  """

  grads: Any
  loss: jax.Array
  per_task: jax.Array
  batch_stats: Any
  balancer_state: Any
  weights: jax.Array


# (params, batch_stats, task_mask [tasks], balancer_state, batch) -> Gradients, for one network.
GradientFn = Callable[[Any, Any, jax.Array, Any, Batch], Gradients]


def _per_task_losses(model: nn.Module, task_names: Sequence[str], batch: Batch):
  """``params, batch_stats -> ([tasks] batch-mean losses, new batch_stats)`` in training mode."""
  def losses(params, batch_stats):
    outputs, updates = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"],
                                   train=True, mutable=["batch_stats"])
    return jnp.mean(task_losses(outputs, batch, task_names), axis=1), updates.get("batch_stats", batch_stats)
  return losses


def equal_weight_gradients(*, model: nn.Module, task_names: Sequence[str],
                           skip_untrained: bool = False, freeze_encoder: bool = False) -> GradientFn:
  """The paper's training: the gradient of the mean of the network's own tasks' losses.

  ``skip_untrained``, ``freeze_encoder``: see ``network_loss`` (``train_step`` sets the first for ``"loop"``).
  """
  def gradients(params, batch_stats, mask, balancer_state, batch):
    grad_fn = jax.value_and_grad(network_loss, has_aux=True)
    (loss, (per_task, new_batch_stats)), grads = grad_fn(params, batch_stats, mask, batch, model=model,
                                                         task_names=task_names, skip_untrained=skip_untrained,
                                                         freeze_encoder=freeze_encoder)
    weights = jnp.where(mask, 1.0, 0.0) / jnp.sum(mask)
    return Gradients(grads, loss, per_task, new_batch_stats, balancer_state, weights)
  return gradients


def frozen_encoder_gradients(*, model: nn.Module, task_names: Sequence[str]) -> GradientFn:
  """Transfer networks (Taskonomy's): the gradient of the mean of the network's own tasks' losses
  with respect to its decoders only (``network_loss`` with ``freeze_encoder``: the encoder in
  inference mode under ``stop_gradient``, so SGD never moves it and its batch statistics stay); the
  decoders of tasks outside ``mask`` are skipped."""
  return equal_weight_gradients(model=model, task_names=task_names, skip_untrained=True, freeze_encoder=True)


def shared_parameter_names(model: nn.Module, image_shape: Sequence[int]) -> tuple[str, ...]:
  """Top-level parameter collections the model's ``encode`` uses: the encoder every task shares.

  Found by initialising ``encode`` alone (shapes only, nothing is computed), so any registered
  model family whose decoders are separate submodules works.
  """
  images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, method=model.encode, train=False),
                             jax.random.PRNGKey(0), images)
  return tuple(sorted(variables["params"]))


def balanced_gradients(*, model: nn.Module, task_names: Sequence[str], balancer: balancing.Balancer,
                       shared_names: Sequence[str], needs_task_gradients: bool = True) -> GradientFn:
  """A ``tg_jax.balancing`` method's gradient for a network that trains every task of ``task_names``.

  The balancer weighs the tasks from their losses and their gradients of the shared parameters
  (``shared_names``; per-task gradients from one forward pass and a ``vmap`` of its VJP over the
  tasks). The shared parameters get the balancer's update and each decoder its own task's gradient
  times that task's weight; for every method that combines linearly (all but GradDrop and DB-MTL,
  ``balancing.combines_linearly``) that is ``sum_t w_t g_t`` over *all* parameters, the gradient of
  ``sum_t w_t L_t`` with the weights held fixed, as back-propagating MGDA-UB's or Kendall et al.'s
  weighted loss does. Balancers weigh the sum of the task losses (``tg_jax.balancing.base``); the
  update is divided by the number of tasks, so ``equal`` reproduces ``equal_weight_gradients`` (the
  paper's mean loss) exactly and every method keeps its scale relative to it at the configured learning
  rate (without it, methods whose weights sum to the number of tasks stepped that many times further).
  Methods whose weights ignore the gradients (``needs_task_gradients=False``) take one backward pass.

  The task mask is not read: a balancer weighs every task it sees (``networks.cohorts`` gives such
  networks a model of exactly their tasks).
  """
  num_tasks = len(task_names)

  def gradients(params, batch_stats, mask, balancer_state, batch):
    del mask
    losses = _per_task_losses(model, task_names, batch)
    per_task, vjp_fn, new_batch_stats = jax.vjp(lambda p: losses(p, batch_stats), params, has_aux=True)
    if needs_task_gradients:
      # Row t of every leaf: task t's gradient of the parameters.
      (task_grads,) = jax.vmap(vjp_fn)(jnp.eye(num_tasks, dtype=per_task.dtype))
      shared, new_balancer_state, info = balancer.update(per_task, {k: task_grads[k] for k in shared_names},
                                                         balancer_state)
      weights = info["weights"] / num_tasks
      # Decoders: each task's gradient times its weight. Shared parameters: the balancer's update, which is
      # the same weighted sum for every method but GradDrop and DB-MTL (balancing.combines_linearly).
      shared = jax.tree_util.tree_map(lambda g: g / num_tasks, shared)
      grads = {**balancing.combine(weights, {k: v for k, v in task_grads.items() if k not in shared}), **shared}
    else:
      placeholder = jnp.zeros((num_tasks, 1), jnp.float32)  # read by nothing but the final combine
      _, new_balancer_state, info = balancer.update(per_task, placeholder, balancer_state)
      weights = info["weights"] / num_tasks
      (grads,) = vjp_fn(weights.astype(per_task.dtype))
    return Gradients(grads, jnp.mean(per_task), per_task, new_batch_stats, new_balancer_state, weights)

  return gradients


class SoftSharedNetworks(nn.Module):
  """Soft parameter sharing: one single-task network per task, side by side.

  ``members[i]`` is a network built for task ``i`` alone (its own encoder, batch statistics and
  decoder); ``__call__`` returns every member's output, ``{task: output}``, like a multi-task
  network's. The members are coupled only through ``soft_sharing_penalty`` on their encoders.
  Parameters: ``members_<i>/<the member network's tree>``.
  """

  members: tuple[nn.Module, ...]

  def __call__(self, images, train: bool):
    outputs = {}
    for member in self.members:
      outputs.update(member(images, train=train))
    return outputs


def soft_sharing_penalty(params: Any, shared_names: Sequence[str], num_members: int) -> jax.Array:
  """``sum_layers sum_i ||W_i - mean_j W_j||^2`` over the members' corresponding encoder weights.

  Args:
    params: a ``SoftSharedNetworks`` parameter tree.
    shared_names: a member network's encoder collections (``shared_parameter_names`` of a member).
    num_members: how many members.
  """
  total = jnp.zeros((), jnp.float32)
  for name in shared_names:
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves),
                           *[params[f"members_{i}"][name] for i in range(num_members)])
    for leaf in jax.tree.leaves(stacked):
      leaf = leaf.astype(jnp.float32)
      total = total + jnp.sum((leaf - jnp.mean(leaf, axis=0, keepdims=True)) ** 2)
  return total


def soft_sharing_gradients(*, model: SoftSharedNetworks, task_names: Sequence[str], weight: float,
                           shared_names: Sequence[str]) -> GradientFn:
  """The gradient of ``sum_t L_t + weight * soft_sharing_penalty`` for a ``SoftSharedNetworks``.

  Each member's loss depends on its own parameters only, so with ``weight = 0`` every member
  follows exactly the gradient it would get trained alone (the *sum* of the task losses, not their
  mean, keeps that true); the penalty's gradient ``2 weight (W_i - mean_j W_j)`` pulls corresponding
  encoder weights towards their mean. The members share one optimiser state, so one learning-rate
  schedule, driven by the mean over tasks of ``L_t`` plus the penalty per task.
  """
  num_members = len(model.members)

  def objective(params, batch_stats, batch):
    per_task, new_batch_stats = _per_task_losses(model, task_names, batch)(params, batch_stats)
    penalty = weight * soft_sharing_penalty(params, shared_names, num_members)
    return jnp.sum(per_task) + penalty, (per_task, penalty, new_batch_stats)

  def gradients(params, batch_stats, mask, balancer_state, batch):
    del mask
    (total, (per_task, penalty, new_batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
        params, batch_stats, batch)
    del penalty
    return Gradients(grads, total / num_members, per_task, new_batch_stats, balancer_state,
                     jnp.ones((num_members,), jnp.float32))

  return gradients


def train_step(state: CohortState, batch: Batch, step: jax.Array, *, model: nn.Module,
               optimizer: optax.GradientTransformationExtraArgs, task_names: Sequence[str],
               task_mask: jax.Array, how: str = VMAP,
               gradient_fn: Optional[GradientFn] = None) -> tuple[CohortState, dict[str, jax.Array]]:
  """One SGD step of every network of the cohort on the same ``batch``.

  Args:
    state: the cohort's state, ``[nets, ...]``.
    batch: a global batch; under ``jit`` with a data-sharded batch, the means in the loss run over
      all devices, so gradients and batch statistics are averaged over devices.
    step: the number of steps taken before this one (for ``diverged_step``).
    task_mask: ``[nets, tasks]`` bool.
    how: ``"vmap"`` or ``"loop"`` (see ``over_networks``).
    gradient_fn: how a network's gradient is formed; default ``equal_weight_gradients`` (under
      ``"loop"`` skipping each network's untrained decoders).

  Returns:
    The new state and metrics ``loss`` ``[nets]`` (NaN for frozen networks), ``task_loss``
    ``[nets, tasks]``, ``task_weight`` ``[nets, tasks]`` (each task loss's weight in the gradient),
    ``learning_rate_scale`` ``[nets]``.
  """
  gradient_fn = gradient_fn or equal_weight_gradients(model=model, task_names=task_names, skip_untrained=how == LOOP)

  def step_one(params, batch_stats, opt_state, diverged_step, balancer_state, mask):
    grads, loss, per_task, new_batch_stats, new_balancer_state, weights = gradient_fn(
        params, batch_stats, mask, balancer_state, batch)
    updates, new_opt_state = optimizer.update(grads, opt_state, params, value=loss)
    new_params = optax.apply_updates(params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    healthy = diverged_step == NOT_YET
    keep = healthy & finite
    # A network that diverges keeps its last finite variables (its best checkpoint is separate).
    choose = lambda new, old: jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, old)
    new_diverged_step = jnp.where(healthy & ~finite, step, diverged_step)
    return (choose(new_params, params), choose(new_batch_stats, batch_stats),
            choose(new_opt_state, opt_state), new_diverged_step, choose(new_balancer_state, balancer_state),
            jnp.where(keep, loss, jnp.nan), per_task, weights)

  params, batch_stats, opt_state, diverged_step, balancer_state, loss, per_task, weights = over_networks(
      step_one, how)(state.params, state.batch_stats, state.opt_state, state.diverged_step, state.balancer_state,
                     task_mask)
  new_state = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state,
                            diverged_step=diverged_step, balancer_state=balancer_state)
  metrics = {"loss": loss, "task_loss": per_task, "task_weight": weights,
             "learning_rate_scale": learning_rate_scale(opt_state)}
  return new_state, metrics


def lookahead_loss_fn(model: nn.Module, task_names: Sequence[str]):
  """The ``loss_fn(shared, rest, batch) -> [tasks]`` of ``tg_jax.affinity.tag.lookahead_affinity``.

  ``shared`` is the encoder's parameter collections (``split_shared``), ``rest`` is
  ``{"params": the decoders, "batch_stats": ...}``: the lookahead step moves the encoder only. The
  losses are the training step's (training mode, batch statistics of the batch). Make it once per
  model: ``lookahead_affinity`` compiles once per function object.
  """
  def loss_fn(shared, rest, batch):
    params = {**rest["params"], **shared}
    outputs = model.apply({"params": params, "batch_stats": rest["batch_stats"]}, batch["image"], train=True,
                          mutable=["batch_stats"])[0]
    return jnp.mean(task_losses(outputs, batch, task_names), axis=1)
  return loss_fn


def split_shared(params: Any, shared_names: Sequence[str]) -> tuple[dict, dict]:
  """``(encoder collections, everything else)`` of one network's ``params``."""
  return ({k: v for k, v in params.items() if k in shared_names},
          {k: v for k, v in params.items() if k not in shared_names})


def eval_losses(params: Any, batch_stats: Any, batch: Batch, *, model: nn.Module, task_names: Sequence[str],
                how: str = VMAP, task_mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """``([nets, tasks] sums, [nets, tasks, batch] per-example losses)`` of the networks on ``batch``.

  The sums are over the batch, weighted by ``batch['weight']``: divide the sums over a split by the
  split's total weight for mean losses (padding examples have weight 0). The per-example losses are
  unweighted; padding examples' are meaningless.

  ``task_mask`` (``[nets, tasks]``, with ``"loop"`` and a model with ``encode``/``decode``): each
  network runs only its own tasks' decoders, as in training; the other tasks' losses are then those
  of a zero output, which no caller reads.
  """
  skip_untrained = how == LOOP and task_mask is not None

  def losses_one(params, batch_stats, mask):
    variables = {"params": params, "batch_stats": batch_stats}
    if skip_untrained:
      representation = model.apply(variables, batch["image"], False, method=model.encode)
      outputs = {task: _decode_if_trained(model, params, batch_stats, representation, False, task, mask[index])[0]
                 for index, task in enumerate(task_names)}
    else:
      outputs = model.apply(variables, batch["image"], train=False)
    losses = task_losses(outputs, batch, task_names)
    # Padded examples may carry arbitrary labels; where() keeps a NaN there from leaking in.
    return jnp.sum(jnp.where(batch["weight"] > 0, losses, 0.0) * batch["weight"], axis=1), losses

  num_networks = jax.tree.leaves(params)[0].shape[0]
  mask = task_mask if skip_untrained else jnp.ones((num_networks, len(task_names)), bool)
  return over_networks(losses_one, how)(params, batch_stats, mask)


def eval_loss_sums(params: Any, batch_stats: Any, batch: Batch, *, model: nn.Module,
                   task_names: Sequence[str], how: str = VMAP, task_mask: Optional[jax.Array] = None) -> jax.Array:
  """``[nets, tasks]`` sums over the batch of per-example losses, weighted by ``batch['weight']``
  (``eval_losses``' sums, without keeping the per-example losses: what validation needs)."""
  return eval_losses(params, batch_stats, batch, model=model, task_names=task_names, how=how, task_mask=task_mask)[0]


def record_validation(state: CohortState, losses: jax.Array, step: jax.Array, record_esa: jax.Array,
                      task_mask: jax.Array) -> CohortState:
  """Updates the best-so-far trackers with validation ``losses`` ``[nets, tasks]`` taken at ``step``.

  A network whose validation loss is not finite is marked diverged. ``record_esa`` (bool scalar)
  stores ``losses`` as the early-stopping-approximation table.
  """
  network_loss_value = masked_mean(losses, task_mask)
  newly_diverged = (state.diverged_step == NOT_YET) & ~jnp.isfinite(network_loss_value)
  diverged_step = jnp.where(newly_diverged, step, state.diverged_step)
  healthy = diverged_step == NOT_YET
  improved = healthy & (network_loss_value < state.best_loss)

  def pick(new, old):
    return jax.tree.map(lambda n, o: jnp.where(improved.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old)

  task_improved = healthy[:, None] & task_mask & (losses < state.task_peak_loss)
  return state.replace(
      best_params=pick(state.params, state.best_params),
      best_batch_stats=pick(state.batch_stats, state.best_batch_stats),
      best_loss=jnp.where(improved, network_loss_value, state.best_loss),
      best_step=jnp.where(improved, step, state.best_step),
      best_task_loss=jnp.where(improved[:, None] & task_mask, losses, state.best_task_loss),
      task_peak_loss=jnp.where(task_improved, losses, state.task_peak_loss),
      task_peak_step=jnp.where(task_improved, step, state.task_peak_step),
      esa_loss=jnp.where(record_esa & task_mask, losses, state.esa_loss),
      diverged_step=diverged_step,
  )


def concatenate(states: Sequence[CohortState]) -> CohortState:
  """Joins the states of a cohort's chunks along the network axis."""
  return jax.tree.map(lambda *leaves: jnp.concatenate(leaves, axis=0), *states)


def split(state: CohortState, sizes: Sequence[int]) -> list[CohortState]:
  """The inverse of ``concatenate``: chunks of ``sizes`` networks."""
  starts = [sum(sizes[:i]) for i in range(len(sizes))]
  return [jax.tree.map(lambda leaf, a=start, n=size: leaf[a:a + n], state) for start, size in zip(starts, sizes)]
