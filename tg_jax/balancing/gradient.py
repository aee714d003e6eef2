"""Balancers that solve for a direction from the task gradients: MGDA-UB, PCGrad, CAGrad, IMTL-G.

Each works on the ``[tasks, tasks]`` Gram matrix of the task gradients and returns the coefficients
``w`` of its direction ``sum_i w_i g_i`` (see ``base``), so each is exact for any parameter count.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from tg_jax.balancing.base import Balancer, EPSILON, finish, gram_matrix, num_tasks_of

MGDA_NORMALISATIONS = ("none", "l2", "loss", "loss+")


def _min_norm_of_two(g11: jax.Array, g12: jax.Array, g22: jax.Array) -> jax.Array:
  """The ``a`` in [0, 1] minimising ``||a v1 + (1 - a) v2||^2`` from the three inner products.

  Closed form: ``a = clip((g22 - g12) / ||v1 - v2||^2, 0, 1)``; 1/2 when ``v1 == v2`` (any ``a`` is
  optimal then).
  """
  distance = g11 + g22 - 2.0 * g12
  return jnp.where(distance > EPSILON, jnp.clip((g22 - g12) / jnp.maximum(distance, EPSILON), 0.0, 1.0), 0.5)


def _project_to_simplex(vector: jax.Array) -> jax.Array:
  """Euclidean projection onto the probability simplex (sort-based, Held et al. 1974)."""
  size = vector.shape[0]
  sorted_desc = jnp.sort(vector)[::-1]
  cumulative = jnp.cumsum(sorted_desc) - 1.0
  positive = sorted_desc - cumulative / jnp.arange(1, size + 1) > 0
  count = jnp.sum(positive)
  threshold = cumulative[count - 1] / count
  return jnp.maximum(vector - threshold, 0.0)


def _minimise_on_simplex(objective, start: jax.Array, step_size: jax.Array, iterations: int) -> jax.Array:
  """Accelerated projected gradient (FISTA) on the simplex, with restarts that keep the objective
  monotone (the last iterate is never worse than ``start``)."""
  gradient = jax.grad(objective)

  def fista_step(_, carry):
    weights, momentum_point, t = carry
    candidate = _project_to_simplex(momentum_point - step_size * gradient(momentum_point))
    restart = objective(candidate) > objective(weights)
    next_t = jnp.where(restart, 1.0, (1 + jnp.sqrt(1 + 4 * t ** 2)) / 2)
    new_weights = jnp.where(restart, weights, candidate)
    momentum = jnp.where(restart, weights, candidate + ((t - 1) / next_t) * (candidate - weights))
    return new_weights, momentum, next_t

  weights, _, _ = jax.lax.fori_loop(0, iterations, fista_step, (start, start, jnp.float32(1.0)))
  return weights


def min_norm_weights(gram: jax.Array, iterations: int = 500) -> jax.Array:
  """``[tasks]`` weights on the simplex of the minimum-norm point of the gradients' convex hull.

  Two tasks: the closed form. More: starting, as Sener & Koltun's solver does, from the best pair's
  exact solution, accelerated projected gradient on ``w.G.w``. (Their Frank-Wolfe steps take weight
  off a wrongly weighted task only slowly: after 2,000 steps they still missed the optimality
  conditions by 2% of the Gram matrix's scale on a 5-task case of ``tests/test_balancing.py``, which
  this solver meets to about 3e-4: it stops once ``w.G.w`` stops falling in float32, so that is its
  precision on any processor.)
  """
  num_tasks = gram.shape[0]
  if num_tasks == 1:
    return jnp.ones((1,), jnp.float32)
  pairs = jnp.array(list(itertools.combinations(range(num_tasks), 2)), jnp.int32)
  first, second = pairs[:, 0], pairs[:, 1]
  a = _min_norm_of_two(gram[first, first], gram[first, second], gram[second, second])
  pair_costs = (a ** 2 * gram[first, first] + 2 * a * (1 - a) * gram[first, second]
                + (1 - a) ** 2 * gram[second, second])
  best = jnp.argmin(pair_costs)
  start = jnp.zeros((num_tasks,), jnp.float32).at[first[best]].set(a[best]).at[second[best]].add(1 - a[best])
  if num_tasks == 2:
    return start
  # w.G.w has gradient Lipschitz constant 2 ||G||_2.
  step_size = 1.0 / (2.0 * jnp.linalg.norm(gram, 2) + EPSILON)
  return _minimise_on_simplex(lambda w: w @ gram @ w, start, step_size, iterations)


def mgda(normalisation: str = "none", iterations: int = 500) -> Balancer:
  """MGDA-UB (Sener & Koltun, NeurIPS 2018): the minimum-norm convex combination of the task gradients.

  The weights solve ``min_{w in simplex} ||sum_i w_i g_i / n_i||`` where ``n_i`` is the gradient
  normalisation of their code: ``"none"`` (1), ``"l2"`` (``||g_i||``), ``"loss"`` (``L_i``) or
  ``"loss+"`` (``L_i ||g_i||``); as there, the weights then multiply the raw gradients (losses). The
  weights sum to 1, so the combined gradient is on the scale of one task's, not of their sum.
  "UB" (the upper bound) is the representation mode of ``base``: pass each task's gradient of the
  shared representation and back-propagate ``sum_i w_i L_i``.
  """
  if normalisation not in MGDA_NORMALISATIONS:
    raise ValueError(f"unknown mgda normalisation {normalisation!r}; known: {', '.join(MGDA_NORMALISATIONS)}")

  def init(num_tasks: int):
    del num_tasks
    return ()

  def update(task_losses, task_grads, state):
    gram = gram_matrix(jax.lax.stop_gradient(task_grads))
    grad_norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
    losses = jax.lax.stop_gradient(task_losses.astype(jnp.float32))
    scale = {"none": jnp.ones_like(losses), "l2": grad_norms, "loss": losses,
             "loss+": losses * grad_norms}[normalisation]
    scale = jnp.maximum(scale, EPSILON)
    weights = min_norm_weights(gram / (scale[:, None] * scale[None, :]), iterations)
    return finish(weights, task_grads, state)

  return Balancer(init, update)


class PCGradState(NamedTuple):
  key: jax.Array  # the random order of projections of the next update is drawn from it


def pcgrad(seed: int = 0) -> Balancer:
  """PCGrad, gradient surgery (Yu et al., NeurIPS 2020).

  Each task gradient ``g_i`` is projected, in a random order of the tasks, onto the normal plane of
  every original gradient ``g_j`` it conflicts with (``g_i' . g_j < 0``:
  ``g_i' -= (g_i' . g_j / ||g_j||^2) g_j``); the combined gradient is the sum of the projected ones.
  As in the authors' code the order is a shuffle of all tasks (a self-projection never triggers,
  as ``g_i' . g_i >= 0`` throughout). The orders come from a key in the state: the same ``seed``
  gives the same sequence of updates.
  """

  def init(num_tasks: int):
    del num_tasks
    return PCGradState(jax.random.key(seed))

  def update(task_losses, task_grads, state):
    num_tasks = num_tasks_of(task_losses)
    gram = gram_matrix(jax.lax.stop_gradient(task_grads))
    key, order_key = jax.random.split(state.key)
    orders = jax.vmap(lambda k: jax.random.permutation(k, num_tasks))(jax.random.split(order_key, num_tasks))

    def project(task, order):
      # coefficients[k]: the projected gradient is sum_k coefficients[k] g_k.
      def step(position, coefficients):
        other = order[position]
        dot = coefficients @ gram[:, other]
        shift = jnp.where(dot < 0, dot / jnp.maximum(gram[other, other], EPSILON), 0.0)
        return coefficients.at[other].add(-shift)
      return jax.lax.fori_loop(0, num_tasks, step, jax.nn.one_hot(task, num_tasks, dtype=jnp.float32))

    coefficients = jax.vmap(project)(jnp.arange(num_tasks), orders)  # [task, coefficient of g_k]
    return finish(jnp.sum(coefficients, axis=0), task_grads, PCGradState(key),
                  projection_coefficients=coefficients)

  return Balancer(init, update)


def cagrad_weights(gram: jax.Array, c: float, iterations: int = 500) -> jax.Array:
  """``[tasks]`` weights on the simplex minimising CAGrad's dual ``w.G.b + c ||g0|| ||g_w||``.

  ``b`` is the uniform vector (``g0 = G b`` the mean gradient) and ``||g_w|| = sqrt(w.G.w)``. The
  authors solve it with SLSQP; here accelerated projected gradient (``_minimise_on_simplex``) on the
  Gram matrix scaled by ``||g0||^2``, which makes the step size independent of the gradients' scale.
  """
  num_tasks = gram.shape[0]
  mean_weights = jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32)
  scaled = gram / (mean_weights @ gram @ mean_weights + EPSILON)
  radius = c

  def objective(weights):
    return weights @ scaled @ mean_weights + radius * jnp.sqrt(weights @ scaled @ weights + 1e-8)

  # The norm term is not smooth where g_w vanishes, so there is no global Lipschitz step; this step
  # with monotone restarts matches SLSQP to about 6e-4 in float32 (tests/test_balancing.py).
  step_size = 1.0 / (jnp.linalg.norm(scaled, 2) * (1.0 + radius) + EPSILON)
  return _minimise_on_simplex(objective, mean_weights, step_size, iterations)


def cagrad(c: float = 0.5, rescale: int = 1, iterations: int = 500) -> Balancer:
  """Conflict-Averse Gradient descent (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021).

  The direction ``d = g0 + c ||g0|| g_w / ||g_w||``, with ``g0`` the mean task gradient and ``w``
  from ``cagrad_weights``, maximises the worst task's improvement ``min_i g_i . d`` within the ball
  ``||d - g0|| <= c ||g0||``. ``c = 0`` is plain gradient descent on the mean loss. ``rescale`` as in
  the authors' code: 0 returns ``d``, 1 returns ``d / (1 + c^2)`` (default), 2 ``d / (1 + c)``.
  """
  if c < 0:
    raise ValueError(f"cagrad c must be >= 0, got {c}")
  if rescale not in (0, 1, 2):
    raise ValueError(f"cagrad rescale must be 0, 1 or 2, got {rescale}")

  def init(num_tasks: int):
    del num_tasks
    return ()

  def update(task_losses, task_grads, state):
    num_tasks = num_tasks_of(task_losses)
    gram = gram_matrix(jax.lax.stop_gradient(task_grads))
    mean_weights = jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32)
    dual_weights = cagrad_weights(gram, c, iterations)
    mean_norm = jnp.sqrt(mean_weights @ gram @ mean_weights + 1e-8)
    dual_norm = jnp.sqrt(dual_weights @ gram @ dual_weights + 1e-8)
    weights = mean_weights + (c * mean_norm / dual_norm) * dual_weights
    weights = weights / {0: 1.0, 1: 1.0 + c ** 2, 2: 1.0 + c}[rescale]
    return finish(weights, task_grads, state, dual_weights=dual_weights)

  return Balancer(init, update)


def imtl_g() -> Balancer:
  """IMTL-G, impartial gradient balancing (Liu et al., ICLR 2021), closed form.

  Finds the weights (summing to 1) whose combination ``g = sum_i w_i g_i`` has the same projection
  onto every unit task gradient ``u_i = g_i / ||g_i||``: with ``D`` the rows ``g_1 - g_i`` and ``U``
  the rows ``u_1 - u_i`` (i >= 2), ``w_{2:} = g_1 U^T (D U^T)^{-1}`` and ``w_1 = 1 - sum w_{2:}``,
  all from the Gram matrix. Like the original it assumes no task gradient vanishes.
  """

  def init(num_tasks: int):
    del num_tasks
    return ()

  def update(task_losses, task_grads, state):
    num_tasks = num_tasks_of(task_losses)
    if num_tasks == 1:
      return finish(jnp.ones((1,), jnp.float32), task_grads, state)
    gram = gram_matrix(jax.lax.stop_gradient(task_grads))
    inverse_norms = 1.0 / jnp.maximum(jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0)), EPSILON)
    # unit_gram[a, b] = g_a . u_b
    unit_gram = gram * inverse_norms[None, :]
    g1_dot_u = unit_gram[0, 0] - unit_gram[0, 1:]                       # g_1 . (u_1 - u_b)
    d_dot_u = (unit_gram[0, 0] - unit_gram[0, 1:])[None, :] - (unit_gram[1:, 0][:, None] - unit_gram[1:, 1:])
    # alpha (D U^T) = g_1 U^T, i.e. (D U^T)^T alpha^T = (g_1 U^T)^T. The pseudo-inverse keeps the
    # weights finite when two task gradients are parallel (any split between them is then impartial).
    rest = jnp.linalg.pinv(d_dot_u.T) @ g1_dot_u
    weights = jnp.concatenate([1.0 - jnp.sum(rest, keepdims=True), rest])
    return finish(weights, task_grads, state)

  return Balancer(init, update)
