"""Balancers that reweight the task losses: equal, uncertainty, DWA, GradNorm, RLW, IMTL-L, FAMO.

Each returns ``combined = sum_i w_i g_i`` with its own weights ``w``; they differ in where the
weights come from (nothing, learned log-variances, the losses' recent descent rates, or a
gradient-norm target).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from tg_jax.balancing.base import Balancer, EPSILON, finish, gram_matrix, num_tasks_of


def equal() -> Balancer:
  """Unweighted tasks: every weight 1, the sum of the task losses (LibMTL's EW; the trainer divides
  every method's update by the number of tasks, which makes this the paper's mean loss)."""

  def init(num_tasks: int, shared_params=None):
    del num_tasks, shared_params
    return ()

  def update(task_losses, task_grads, state):
    num_tasks = num_tasks_of(task_losses)
    return finish(jnp.ones((num_tasks,), jnp.float32), task_grads, state)

  return Balancer(init, update)


class UncertaintyState(NamedTuple):
  log_variances: jax.Array  # [tasks] s_i = log sigma_i^2; the weight of task i is exp(-s_i)
  optimizer_state: optax.OptState


def uncertainty(learning_rate: float = 1e-2, optimizer: Optional[optax.GradientTransformation] = None) -> Balancer:
  """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

  The weighted loss is ``sum_i exp(-s_i) L_i + s_i`` with learned log-variances ``s`` (initially
  0: equal weights). For fixed ``L_i`` its minimum over ``s_i`` is at ``exp(s_i) = L_i``, so the
  weights ``exp(-s_i)`` track the inverse loss scales. (Kendall's regression form,
  ``L_i / (2 sigma_i^2) + log sigma_i``, is this objective halved: same fixed point, weights 1/2.)

  The log-variances live in this balancer's state and take their own optimiser step (default
  Adam at ``learning_rate``) inside ``update``, rather than being extra trainable parameters of the
  network: the trainer then needs no knowledge of them, and checkpointing the balancer state keeps
  them. The shared parameters get ``sum_i exp(-s_i) g_i`` with the weights from before the step.
  """
  optimizer = optimizer or optax.adam(learning_rate)

  def init(num_tasks: int, shared_params=None):
    del shared_params
    log_variances = jnp.zeros((num_tasks,), jnp.float32)
    return UncertaintyState(log_variances, optimizer.init(log_variances))

  def update(task_losses, task_grads, state):
    losses = jax.lax.stop_gradient(task_losses.astype(jnp.float32))
    weights = jnp.exp(-state.log_variances)
    # d/ds_i of exp(-s_i) L_i + s_i.
    gradient = 1.0 - weights * losses
    step, optimizer_state = optimizer.update(gradient, state.optimizer_state, state.log_variances)
    new_state = UncertaintyState(optax.apply_updates(state.log_variances, step), optimizer_state)
    return finish(weights, task_grads, new_state)

  return Balancer(init, update)


class DWAState(NamedTuple):
  period_loss_sum: jax.Array  # [tasks] summed losses of the period in progress
  steps_in_period: jax.Array  # [] int32
  last_means: jax.Array  # [2, tasks] mean losses of the last two finished periods, newest first
  finished_periods: jax.Array  # [] int32


def dwa(temperature: float = 2.0, period: int = 1) -> Balancer:
  """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019).

  ``w_i = tasks * softmax_i(r_i / temperature)`` with ``r_i = Lbar_i(k-1) / Lbar_i(k-2)``, the ratio
  of task i's mean training loss over the last two finished periods; equal weights until two
  periods have finished. The paper's period is one epoch: pass ``period`` = steps per epoch (the
  default 1 uses single steps' losses).
  """
  if temperature <= 0:
    raise ValueError(f"dwa temperature must be > 0, got {temperature}")
  if period < 1:
    raise ValueError(f"dwa period must be >= 1 step, got {period}")

  def init(num_tasks: int, shared_params=None):
    del shared_params
    return DWAState(jnp.zeros((num_tasks,), jnp.float32), jnp.zeros((), jnp.int32),
                    jnp.ones((2, num_tasks), jnp.float32), jnp.zeros((), jnp.int32))

  def update(task_losses, task_grads, state):
    num_tasks = num_tasks_of(task_losses)
    ratios = state.last_means[0] / jnp.maximum(state.last_means[1], EPSILON)
    weights = jnp.where(state.finished_periods >= 2, num_tasks * jax.nn.softmax(ratios / temperature),
                        jnp.ones((num_tasks,), jnp.float32))
    loss_sum = state.period_loss_sum + jax.lax.stop_gradient(task_losses.astype(jnp.float32))
    steps = state.steps_in_period + 1
    period_done = steps >= period
    new_state = DWAState(
        period_loss_sum=jnp.where(period_done, 0.0, loss_sum),
        steps_in_period=jnp.where(period_done, 0, steps),
        last_means=jnp.where(period_done, jnp.stack([loss_sum / steps, state.last_means[0]]), state.last_means),
        finished_periods=state.finished_periods + period_done.astype(jnp.int32))
    return finish(weights, task_grads, new_state, loss_ratios=ratios)

  return Balancer(init, update)


class GradNormState(NamedTuple):
  weights: jax.Array  # [tasks], summing to tasks
  initial_losses: jax.Array  # [tasks] L_i(0); set by the first update
  started: jax.Array  # [] bool
  optimizer_state: optax.OptState


def gradnorm(alpha: float = 1.5, learning_rate: float = 1e-2,
             optimizer: Optional[optax.GradientTransformation] = None) -> Balancer:
  """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018).

  Learns weights ``w`` so that the weighted gradient norms ``G_i = w_i ||g_i||`` approach
  ``mean(G) * r_i^alpha``, where ``r_i = (L_i / L_i(0)) / mean_k(L_k / L_k(0))`` is task i's relative
  inverse training rate: ``w`` takes one optimiser step (default Adam at ``learning_rate``) on
  ``sum_i |G_i - target_i|`` with the target held constant, then is clipped positive and renormalised
  to sum to ``tasks``. ``L_i(0)`` are the losses at the first update. The paper measures ``g_i`` at
  the last shared layer: pass those gradients in the representation mode (see ``base``), or all
  shared parameters' gradients. The shared parameters get ``sum_i w_i g_i`` with the weights from
  before the step.
  """
  optimizer = optimizer or optax.adam(learning_rate)

  def init(num_tasks: int, shared_params=None):
    del shared_params
    weights = jnp.ones((num_tasks,), jnp.float32)
    return GradNormState(weights, jnp.ones((num_tasks,), jnp.float32), jnp.zeros((), bool),
                         optimizer.init(weights))

  def update(task_losses, task_grads, state):
    num_tasks = num_tasks_of(task_losses)
    losses = jax.lax.stop_gradient(task_losses.astype(jnp.float32))
    initial_losses = jnp.where(state.started, state.initial_losses, losses)
    grad_norms = jnp.sqrt(jnp.maximum(jnp.diag(gram_matrix(jax.lax.stop_gradient(task_grads))), 0.0))
    training_rates = losses / jnp.maximum(initial_losses, EPSILON)
    relative_rates = training_rates / jnp.maximum(jnp.mean(training_rates), EPSILON)
    targets = jnp.mean(state.weights * grad_norms) * relative_rates ** alpha

    def gradnorm_loss(weights):
      return jnp.sum(jnp.abs(weights * grad_norms - targets))

    weight_grads = jax.grad(gradnorm_loss)(state.weights)
    step, optimizer_state = optimizer.update(weight_grads, state.optimizer_state, state.weights)
    new_weights = jnp.maximum(optax.apply_updates(state.weights, step), EPSILON)
    new_weights = num_tasks * new_weights / jnp.sum(new_weights)
    new_state = GradNormState(new_weights, initial_losses, jnp.ones((), bool), optimizer_state)
    return finish(state.weights, task_grads, new_state, weighted_grad_norms=state.weights * grad_norms,
                  target_grad_norms=targets)

  return Balancer(init, update)


class RLWState(NamedTuple):
  key: jax.Array  # the next update's weights are drawn from it


def rlw(seed: int = 0) -> Balancer:
  """Random Loss Weighting (Lin, Ye, Xu, Shi & Zhang, TMLR 2022): every step fresh weights
  ``w = softmax(z)``, ``z ~ N(0, I)`` (summing to 1, LibMTL's scale: equal weighting's sum to the number of tasks). The key
  lives in the state, so the same ``seed`` gives the same weights and a resumed run continues them."""

  def init(num_tasks: int, shared_params=None):
    del num_tasks, shared_params
    return RLWState(jax.random.key(seed))

  def update(task_losses, task_grads, state):
    num_tasks = num_tasks_of(task_losses)
    key, draw = jax.random.split(state.key)
    weights = jax.nn.softmax(jax.random.normal(draw, (num_tasks,), jnp.float32))
    return finish(weights, task_grads, RLWState(key))

  return Balancer(init, update)


class ScaleState(NamedTuple):
  log_scales: jax.Array  # [tasks] s_i; task i's loss is scaled by exp(s_i)
  optimizer_state: optax.OptState


def learned_loss_scales(optimizer: optax.GradientTransformation):
  """IMTL-L's scales as (init, step): ``step(losses, state) -> (exp(s), new_state)`` takes one optimiser
  step on ``sum_i exp(s_i) L_i - s_i``, whose minimum over ``s_i`` is at ``exp(s_i) L_i = 1``."""

  def init(num_tasks: int, shared_params=None):  # a Balancer's init
    del shared_params
    log_scales = jnp.zeros((num_tasks,), jnp.float32)
    return ScaleState(log_scales, optimizer.init(log_scales))

  def step(task_losses, state):
    losses = jax.lax.stop_gradient(task_losses.astype(jnp.float32))
    scales = jnp.exp(state.log_scales)
    gradient = scales * losses - 1.0  # d/ds_i of exp(s_i) L_i - s_i
    change, optimizer_state = optimizer.update(gradient, state.optimizer_state, state.log_scales)
    return scales, ScaleState(optax.apply_updates(state.log_scales, change), optimizer_state)

  return init, step


def imtl_l(learning_rate: float = 1e-2, optimizer: Optional[optax.GradientTransformation] = None) -> Balancer:
  """IMTL-L, impartial loss scaling (Liu et al., ICLR 2021): the loss ``sum_i exp(s_i) L_i - s_i`` with
  learned ``s`` (initially 0), so every scaled loss ``exp(s_i) L_i`` is driven to 1: the weights
  ``exp(s_i)`` track ``1 / L_i``. As for ``uncertainty``, ``s`` lives in the state and takes its own
  optimiser step (default Adam at ``learning_rate``); the shared parameters get ``sum_i exp(s_i) g_i``
  with the scales from before the step."""
  init_scales, step_scales = learned_loss_scales(optimizer or optax.adam(learning_rate))

  def update(task_losses, task_grads, state):
    scales, new_state = step_scales(task_losses, state)
    return finish(scales, task_grads, new_state)

  return Balancer(init_scales, update)


class FAMOState(NamedTuple):
  logits: jax.Array  # [tasks] xi; the task weights are softmax(xi)
  previous_losses: jax.Array  # [tasks] the last update's losses
  started: jax.Array  # [] bool
  optimizer_state: optax.OptState


def famo(learning_rate: float = 0.025, weight_decay: float = 1e-3,
         optimizer: Optional[optax.GradientTransformation] = None) -> Balancer:
  """FAMO, fast adaptive multitask optimisation (Liu, Liang, Chen & Liu, NeurIPS 2023).

  The step descends ``sum_i z_i log L_i`` with ``z = softmax(xi)``, rescaled by
  ``c = 1 / sum_i (z_i / L_i)``: the weights ``w_i = c z_i / L_i`` sum to 1. The logits learn which
  task's log-loss falls slowest: with ``delta_i = log L_i(before) - log L_i(after)`` they take an
  optimiser step (default Adam at ``learning_rate``, the authors' 0.025) on
  ``J_softmax(xi)^T delta + weight_decay xi``. The authors evaluate "after" on the same batch with a
  second forward pass; here it is the next update's losses (the next batch), so FAMO costs no extra
  pass and fits ``update``'s one set of losses.
  """
  optimizer = optimizer or optax.adam(learning_rate)

  def init(num_tasks: int, shared_params=None):
    del shared_params
    logits = jnp.zeros((num_tasks,), jnp.float32)
    return FAMOState(logits, jnp.ones((num_tasks,), jnp.float32), jnp.zeros((), bool), optimizer.init(logits))

  def update(task_losses, task_grads, state):
    losses = jax.lax.stop_gradient(task_losses.astype(jnp.float32)) + 1e-8
    z = jax.nn.softmax(state.logits)
    delta = jnp.log(state.previous_losses) - jnp.log(losses)
    # J_softmax^T delta, J = diag(z) - z z^T.
    logit_gradient = z * delta - z * jnp.dot(z, delta) + weight_decay * state.logits
    change, optimizer_state = optimizer.update(logit_gradient, state.optimizer_state, state.logits)
    logits = jnp.where(state.started, optax.apply_updates(state.logits, change), state.logits)
    optimizer_state = jax.tree_util.tree_map(lambda new, old: jnp.where(state.started, new, old),
                                             optimizer_state, state.optimizer_state)
    z = jax.nn.softmax(logits)
    weights = (z / losses) / jnp.sum(z / losses)
    return finish(weights, task_grads, FAMOState(logits, losses, jnp.ones((), bool), optimizer_state),
                  task_logits=logits)

  return Balancer(init, update)
