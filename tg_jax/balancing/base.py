"""The shape every balancing method shares, and the gradient algebra they are built from.

A balancer is a pair of pure functions, in the manner of optax's ``GradientTransformation``:

- ``init(num_tasks) -> state``: the method's state (a pytree of arrays; empty for stateless ones).
- ``update(task_losses, task_grads, state) -> (combined_grads, new_state, info)``:
  ``task_losses`` is ``[tasks]`` (this step's per-task training losses), ``task_grads`` a pytree
  whose leaves have a leading ``[tasks]`` axis (each task's gradient of the shared parameters, e.g.
  from ``jax.jacrev`` of a ``[tasks]``-valued loss). ``combined_grads`` has the shape of one task's
  gradient and is what the optimiser should apply to the shared parameters; task-specific
  parameters keep their own task's gradient.

Every method here combines the task gradients linearly, so ``info["weights"]`` (``[tasks]``, no
gradient) always satisfies ``combined_grads == sum_i weights[i] * task_grads[i]``. That makes two
ways of using a balancer equivalent:

1. Per-task parameter gradients in, ``combined_grads`` out (exact, ``tasks`` backward passes).
2. The cheap "representation" mode of MGDA-UB (Sener & Koltun 2018) and GradNorm (Chen et al. 2018):
   pass each task's gradient of the shared *representation* (or of the last shared layer) as
   ``task_grads``, then back-propagate ``sum_i weights[i] * loss_i`` once through the network.

All methods reduce the gradients to their ``[tasks, tasks]`` Gram matrix first, so their cost beyond
that is independent of the parameter count.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any
# Denominators below this are treated as zero: a task with a vanishing gradient has no direction.
EPSILON = 1e-12


class Balancer(NamedTuple):
  """A balancing method: ``init(num_tasks) -> state`` and
  ``update(task_losses [tasks], task_grads (leaves [tasks, ...]), state) ->
  (combined_grads, new_state, info)``; see the module docstring."""

  init: Callable[[int], PyTree]
  update: Callable[[jax.Array, PyTree, PyTree], tuple[PyTree, PyTree, dict]]


def gram_matrix(task_grads: PyTree) -> jax.Array:
  """``[tasks, tasks]`` inner products of the task gradients, summed over all leaves, in float32.

  Uses the highest matmul precision: TF32/bf16 products would make the min-norm and projection
  solvers see conflicts that are not there.
  """
  leaves = jax.tree_util.tree_leaves(task_grads)
  if not leaves:
    raise ValueError("task_grads is empty; pass each task's gradient of the shared parameters")
  num_tasks = leaves[0].shape[0]
  total = jnp.zeros((num_tasks, num_tasks), jnp.float32)
  for leaf in leaves:
    if leaf.shape[0] != num_tasks:
      raise ValueError(f"every task_grads leaf needs the same leading [tasks] axis; got {leaf.shape[0]} "
                       f"and {num_tasks}")
    flat = leaf.reshape(num_tasks, -1).astype(jnp.float32)
    total = total + jnp.matmul(flat, flat.T, precision=jax.lax.Precision.HIGHEST)
  return total


def combine(weights: jax.Array, task_grads: PyTree) -> PyTree:
  """``sum_i weights[i] * task_grads[i]``, leaf by leaf, in each leaf's dtype."""
  def weighted_sum(leaf):
    return jnp.tensordot(weights.astype(jnp.float32), leaf.astype(jnp.float32), axes=1,
                         precision=jax.lax.Precision.HIGHEST).astype(leaf.dtype)
  return jax.tree_util.tree_map(weighted_sum, task_grads)


def finish(weights: jax.Array, task_grads: PyTree, state: PyTree, **extra_info) -> tuple[PyTree, PyTree, dict]:
  """The common ending of ``update``: combined gradients, state, and ``info`` with the weights."""
  weights = jax.lax.stop_gradient(weights.astype(jnp.float32))
  return combine(weights, task_grads), state, {"weights": weights, **extra_info}


def num_tasks_of(task_losses: jax.Array) -> int:
  if task_losses.ndim != 1:
    raise ValueError(f"task_losses must be a [tasks] vector, got shape {task_losses.shape}")
  return task_losses.shape[0]
