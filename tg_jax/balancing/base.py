"""The shape every balancing method shares, and the gradient algebra they are built from.

A balancer is a pair of pure functions, in the manner of optax's ``GradientTransformation``:

- ``init(num_tasks, shared_params=None) -> state``: the method's state (a pytree of arrays; empty for
  stateless ones). ``shared_params`` (arrays or ``jax.ShapeDtypeStruct``s shaped like one task's
  gradient) is read only by methods that keep gradient-shaped state (DB-MTL's moving averages).
- ``update(task_losses, task_grads, state) -> (combined_grads, new_state, info)``:
  ``task_losses`` is ``[tasks]`` (this step's per-task training losses), ``task_grads`` a pytree
  whose leaves have a leading ``[tasks]`` axis (each task's gradient of the shared parameters, e.g.
  from ``jax.jacrev`` of a ``[tasks]``-valued loss). ``combined_grads`` has the shape of one task's
  gradient and is what the optimiser should apply to the shared parameters; task-specific
  parameters keep their own task's gradient.

Weights are on the *sum* of the task losses, LibMTL's convention, in which each method's paper and
LibMTL's code set their scale: ``equal`` is all ones, MGDA-UB's weights sum to 1, GradNorm's to the
number of tasks. A trainer that wants equal weighting to be the mean loss (the paper's step, as
``tg_jax.training.cohort`` does) divides every method's update by the number of tasks, so the methods
keep their scales relative to equal weighting at one learning rate.

``info["weights"]`` (``[tasks]``, no gradient) is what each task's own (task-specific) parameters'
gradient is multiplied by. All but two methods combine the task gradients linearly, so that
``combined_grads == sum_i weights[i] * task_grads[i]``; GradDrop (element-wise sign masks) and DB-MTL
(moving averages of past gradients) do not (``balancing.combines_linearly``), and trainers apply their
``combined_grads`` to the shared parameters. For the linear ones two ways of using a balancer are
equivalent:

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
  """A balancing method: ``init(num_tasks, shared_params=None) -> state`` and
  ``update(task_losses [tasks], task_grads (leaves [tasks, ...]), state) ->
  (combined_grads, new_state, info)``; see the module docstring."""

  init: Callable[..., PyTree]
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


class CentredGram(NamedTuple):
  """The task gradients ``g_i`` as their mean ``m`` plus deviations ``d_i = g_i - m``, in float32.

  For weights summing to 1, ``sum_i w_i g_i = m + sum_i w_i d_i``, so
  ``||sum_i w_i g_i||^2 = mean_sq + 2 w.cross + w.deviations.w`` and ``g_w . m = mean_sq + w.cross``.
  Solvers that compare such values work on ``deviations`` and ``cross`` directly: when the task
  gradients are nearly parallel their Gram matrix's entries all round to about ``||m||^2`` in float32,
  and the differences the solver must see are lost, while these terms keep them.
  """

  deviations: jax.Array  # [tasks, tasks] d_i . d_j
  cross: jax.Array  # [tasks] d_i . m
  mean_sq: jax.Array  # [] m . m


def centred_gram(task_grads: PyTree, scale: jax.Array | None = None) -> CentredGram:
  """``CentredGram`` of the task gradients, each divided by ``scale[i]`` if given ([tasks], > 0).

  The deviations are formed leaf by leaf before any product: a rounding error of the mean is common
  to every ``d_i`` and cancels in ``m + sum_i w_i d_i``, and ``g_i - m`` is exact when they are close.
  """
  leaves = jax.tree_util.tree_leaves(task_grads)
  if not leaves:
    raise ValueError("task_grads is empty; pass each task's gradient of the shared parameters")
  num_tasks = leaves[0].shape[0]
  deviations = jnp.zeros((num_tasks, num_tasks), jnp.float32)
  cross = jnp.zeros((num_tasks,), jnp.float32)
  mean_sq = jnp.zeros((), jnp.float32)
  for leaf in leaves:
    if leaf.shape[0] != num_tasks:
      raise ValueError(f"every task_grads leaf needs the same leading [tasks] axis; got {leaf.shape[0]} "
                       f"and {num_tasks}")
    flat = leaf.reshape(num_tasks, -1).astype(jnp.float32)
    if scale is not None:
      flat = flat / scale[:, None]
    mean = jnp.mean(flat, axis=0)
    centred = flat - mean
    deviations = deviations + jnp.matmul(centred, centred.T, precision=jax.lax.Precision.HIGHEST)
    cross = cross + jnp.matmul(centred, mean, precision=jax.lax.Precision.HIGHEST)
    mean_sq = mean_sq + jnp.sum(mean * mean)
  return CentredGram(deviations, cross, mean_sq)


def centred_from_gram(gram: jax.Array) -> CentredGram:
  """``CentredGram`` from a Gram matrix (for callers that only have one; ``centred_gram`` of the
  gradients is more precise when they are nearly parallel)."""
  gram = jnp.asarray(gram, jnp.float32)
  mean_weights = jnp.full((gram.shape[0],), 1.0 / gram.shape[0], jnp.float32)
  row = gram @ mean_weights  # g_i . m
  mean_sq = mean_weights @ row
  return CentredGram(gram - row[:, None] - row[None, :] + mean_sq, row - mean_sq, mean_sq)


def squared_norms(task_grads: PyTree) -> jax.Array:
  """``[tasks]`` squared norms of the task gradients, summed over all leaves, in float32."""
  leaves = jax.tree_util.tree_leaves(task_grads)
  return sum(jnp.sum(leaf.reshape(leaf.shape[0], -1).astype(jnp.float32) ** 2, axis=1) for leaf in leaves)


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


def reseeded(state: PyTree, key: jax.Array) -> PyTree:
  """``state`` with every PRNG key in it folded with bits drawn from ``key`` (a raw or typed key).

  A trainer builds one balancer for many networks (seed replicas among them); folding each network's
  own key into its state gives each its own random choices (PCGrad's and GradVac's orders, GradDrop's
  masks, RLW's weights) instead of one sequence shared by all.
  """
  salt = jax.random.bits(key, dtype=jnp.uint32)

  def fold(leaf):
    is_key = hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
    return jax.random.fold_in(leaf, salt) if is_key else leaf

  return jax.tree_util.tree_map(fold, state)


def num_tasks_of(task_losses: jax.Array) -> int:
  if task_losses.ndim != 1:
    raise ValueError(f"task_losses must be a [tasks] vector, got shape {task_losses.shape}")
  return task_losses.shape[0]
