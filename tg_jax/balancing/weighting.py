"""Balancers that reweight the task losses: equal, uncertainty, DWA, GradNorm.

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
  """The paper's default, unweighted tasks: the mean of the task losses (every weight 1 / tasks), as
  the trainer's ``cohort.network_loss`` computes it."""

  def init(num_tasks: int):
    del num_tasks
    return ()

  def update(task_losses, task_grads, state):
    num_tasks = num_tasks_of(task_losses)
    return finish(jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32), task_grads, state)

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

  def init(num_tasks: int):
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

  def init(num_tasks: int):
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

  def init(num_tasks: int):
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
