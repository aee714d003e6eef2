"""Lookahead inter-task affinity from one all-task training run (TAG; Fifty et al., NeurIPS 2021).

During training of one network on all tasks, every few steps, the affinity of task i onto task j is

    Z(i -> j) = 1 - L_j(shared - lr * grad_shared L_i, task params, batch) / L_j(shared, task params, batch)

the relative drop of task j's loss on the *same* batch after an SGD step on the shared parameters
taken for task i alone (positive: a step for i helps j). The affinities are averaged over training
(``AffinitySum``) and handed to the numpy side (``tg_jax.selection.tag``) to pick groups.

As in the authors' code (google-research/tag), the lookahead moves the shared (encoder) parameters
only and leaves the task-specific heads where they are; their code also divides Z by the learning
rate (``scale_by_learning_rate=True``), which matters only when the learning rate changes during
training, as a decayed step shrinks every Z in proportion. Their lookahead reuses the optimiser's
weight decay; a plain SGD step is used here, as in the paper's definition.

The model is seen only through ``loss_fn(shared_params, task_params, batch) -> [tasks]`` per-task
mean losses of the all-task network, so any Flax model fits: close over ``apply_fn`` and batch
statistics, and split the parameter tree into the shared trunk and the heads.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any
LossFn = Callable[[PyTree, PyTree, PyTree], jax.Array]


@functools.partial(jax.jit, static_argnames=("loss_fn", "scale_by_learning_rate"))
def lookahead_affinity(loss_fn: LossFn, shared_params: PyTree, task_params: PyTree, batch: PyTree,
                       learning_rate: jax.Array, scale_by_learning_rate: bool = False) -> jax.Array:
  """``[source, target]`` lookahead affinities ``Z[i, j] = Z(i -> j)`` on one batch.

  Args:
    loss_fn: ``(shared_params, task_params, batch) -> [tasks]`` per-task losses; static (pass the
      same function object each call, or every call compiles anew).
    shared_params: the parameters every task's loss depends on; the lookahead step moves these.
    task_params: everything else (task heads), held fixed.
    batch: one training batch; the "after" losses are measured on the same batch.
    learning_rate: the SGD step size of the lookahead (the trainer's current learning rate).
    scale_by_learning_rate: divide Z by ``learning_rate``, as the authors' code does.

  Returns:
    ``[tasks, tasks]`` float32; row i is the effect of a step on task i on every task. Where a
    task's loss is already 0 its column is 0 (there is nothing to improve).
  """
  losses_before, vjp = jax.vjp(lambda shared: loss_fn(shared, task_params, batch), shared_params)
  num_tasks = losses_before.shape[0]
  # Row i of the Jacobian is task i's gradient of the shared parameters.
  (task_grads,) = jax.vmap(vjp)(jnp.eye(num_tasks, dtype=losses_before.dtype))

  def losses_after_step_on(task_grad):
    stepped = jax.tree_util.tree_map(lambda p, g: p - learning_rate * g, shared_params, task_grad)
    return loss_fn(stepped, task_params, batch)

  losses_after = jax.vmap(losses_after_step_on)(task_grads)                  # [source, target]
  before = losses_before.astype(jnp.float32)[None, :]
  affinity = jnp.where(before != 0, 1.0 - losses_after.astype(jnp.float32) / jnp.where(before != 0, before, 1.0),
                       0.0)
  if scale_by_learning_rate:
    affinity = affinity / learning_rate
  return affinity


class AffinitySum(NamedTuple):
  """A running sum of affinity matrices over training; a pytree, so it can live in a train state.

  Attributes:
    total: ``[tasks, tasks]`` sum of the ``[source, target]`` matrices added so far.
    count: ``[]`` how many were added.
  """

  total: jax.Array
  count: jax.Array

  @classmethod
  def zeros(cls, num_tasks: int) -> "AffinitySum":
    return cls(jnp.zeros((num_tasks, num_tasks), jnp.float32), jnp.zeros((), jnp.int32))

  def add(self, affinity: jax.Array) -> "AffinitySum":
    return AffinitySum(self.total + affinity.astype(jnp.float32), self.count + 1)

  def mean(self) -> jax.Array:
    """The average ``[source, target]`` affinity; an error before anything was added."""
    if int(self.count) == 0:
      raise ValueError("no affinities were accumulated; call add() during training before mean()")
    return self.total / self.count
