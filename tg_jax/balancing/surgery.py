"""Balancers whose shared update is not a linear combination of this step's task gradients:
GradDrop (element-wise sign masks) and DB-MTL (moving averages of past gradients).

Their ``update`` returns the shared parameters' update as ``combined_grads``; ``info["weights"]`` is
only what each task's own (task-specific) parameters' gradient is multiplied by (see ``base``). So the
representation mode of ``base`` does not apply to them, and ``balancing.combines_linearly`` is false.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from tg_jax.balancing.base import Balancer, num_tasks_of


class GradDropState(NamedTuple):
  key: jax.Array  # the next update's uniform draws come from it


def graddrop(leak: float = 0.0, seed: int = 0) -> Balancer:
  """GradDrop, gradient sign dropout (Chen et al., NeurIPS 2020).

  Element-wise over the shared parameters: the sign purity ``P = (1 + sum_i g_i / sum_i |g_i|) / 2``
  is the probability of keeping the positive sign, drawn with one uniform ``U`` per element; task
  ``i``'s gradient is kept where its sign was chosen (``P > U`` and ``g_i > 0``, or ``P < U`` and
  ``g_i < 0``) and dropped elsewhere, and the kept ones are summed: ``sum_i (leak + (1 - leak) M_i)
  g_i``. ``leak = 1`` is the plain sum. The paper applies it to the gradients at a representation
  (times the sign of the activations); here to the shared parameters' gradients. Task-specific
  parameters get their own task's gradient (weight 1), as the summed loss gives them.
  """
  if not 0.0 <= leak <= 1.0:
    raise ValueError(f"graddrop leak must be in [0, 1], got {leak}")

  def init(num_tasks: int, shared_params=None):
    del num_tasks, shared_params
    return GradDropState(jax.random.key(seed))

  def update(task_losses, task_grads, state):
    num_tasks = num_tasks_of(task_losses)
    key, draw = jax.random.split(state.key)
    leaves, treedef = jax.tree_util.tree_flatten(jax.lax.stop_gradient(task_grads))

    def drop(leaf, leaf_key):
      grads = leaf.astype(jnp.float32)  # [tasks, ...]
      purity = 0.5 * (1.0 + jnp.sum(grads, axis=0) / (jnp.sum(jnp.abs(grads), axis=0) + 1e-7))
      uniform = jax.random.uniform(leaf_key, purity.shape)
      kept = ((purity > uniform) & (grads > 0)) | ((purity < uniform) & (grads < 0))
      return jnp.sum(grads * (leak + (1.0 - leak) * kept), axis=0).astype(leaf.dtype)

    keys = jax.random.split(draw, len(leaves))
    combined = jax.tree_util.tree_unflatten(treedef, [drop(leaf, k) for leaf, k in zip(leaves, keys)])
    return combined, GradDropState(key), {"weights": jnp.ones((num_tasks,), jnp.float32)}

  return Balancer(init, update)


class DBMTLState(NamedTuple):
  averages: Any  # like task_grads: each task's moving average of its log-loss gradient
  steps: jax.Array  # [] int32 updates so far


def db_mtl(beta: float = 0.9, beta_sigma: float = 0.0) -> Balancer:
  """DB-MTL, dual-balancing multi-task learning (Lin, Ye, Xu, Shi & Zhang, 2023).

  Loss scales: each task descends ``log L_i``, whose gradient is ``g_i / L_i``. Gradient magnitudes:
  a moving average ``a_i <- a_i + (beta / k^beta_sigma) (h_i - a_i)`` (written ``h_i + ... (a_i - h_i)``
  in the authors' code; ``k`` the update's number from 1, ``a_i`` from 0) of ``h_i = g_i / L_i``, and
  the shared update ``sum_i (max_j ||a_j|| / ||a_i||) a_i``: every task's average rescaled to the largest
  norm. Task-specific parameters get ``g_i / L_i``. The averages have the shared parameters' shapes, so
  ``init`` needs ``shared_params``.
  """
  if not 0.0 <= beta < 1.0:
    raise ValueError(f"db_mtl beta must be in [0, 1), got {beta}")

  def init(num_tasks: int, shared_params=None):
    if shared_params is None:
      raise ValueError("db_mtl keeps moving averages of the task gradients: pass init(num_tasks, shared_params) "
                       "with shared_params shaped like one task's gradient")
    averages = jax.tree_util.tree_map(lambda p: jnp.zeros((num_tasks, *p.shape), p.dtype), shared_params)
    return DBMTLState(averages, jnp.zeros((), jnp.int32))

  def update(task_losses, task_grads, state):
    losses = jax.lax.stop_gradient(task_losses.astype(jnp.float32)) + 1e-8
    steps = state.steps + 1
    decay = beta / steps.astype(jnp.float32) ** beta_sigma

    def average(old, grads):
      log_grads = grads.astype(jnp.float32) / losses.reshape((-1,) + (1,) * (grads.ndim - 1))
      return (log_grads + decay * (old.astype(jnp.float32) - log_grads)).astype(old.dtype)

    averages = jax.tree_util.tree_map(average, state.averages, jax.lax.stop_gradient(task_grads))
    norms = jnp.sqrt(sum(jnp.sum(leaf.reshape(leaf.shape[0], -1).astype(jnp.float32) ** 2, axis=1)
                         for leaf in jax.tree_util.tree_leaves(averages)))
    scales = jnp.max(norms) / (norms + 1e-8)
    combined = jax.tree_util.tree_map(
        lambda leaf: jnp.tensordot(scales, leaf.astype(jnp.float32), axes=1).astype(leaf.dtype), averages)
    return combined, DBMTLState(averages, steps), {"weights": 1.0 / losses, "average_scales": scales}

  return Balancer(init, update)
