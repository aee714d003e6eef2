"""Balancers that solve for a direction from the task gradients: MGDA-UB, PCGrad, CAGrad, IMTL-G, IMTL,
Nash-MTL, Aligned-MTL, GradVac.

Each works on the ``[tasks, tasks]`` Gram matrix of the task gradients (or its centred form,
``base.CentredGram``) and returns the coefficients ``w`` of its direction ``sum_i w_i g_i`` (see
``base``), so each is exact for any parameter count. The simplex QPs of MGDA-UB and CAGrad are solved
exactly for up to ``MAX_EXACT_TASKS`` tasks (``simplex_qp``); their tests compare with float64
references on nearly parallel, rank-deficient, vanishing and badly scaled gradients.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tg_jax.balancing.base import (Balancer, CentredGram, EPSILON, centred_from_gram, centred_gram, finish,
                                   gram_matrix, num_tasks_of, squared_norms)
from tg_jax.balancing.weighting import learned_loss_scales

MGDA_NORMALISATIONS = ("none", "l2", "loss", "loss+")


# Up to this many tasks the simplex QPs are solved exactly, over every support (2^tasks - 1 small
# linear solves on the Gram matrix: 4,095 of size 13 at most, far below a network's backward pass).
MAX_EXACT_TASKS = 12


def _support_masks(num_tasks: int) -> np.ndarray:
  """``[2^tasks - 1, tasks]`` float32: every non-empty subset of the tasks as a 0/1 row."""
  codes = np.arange(1, 2 ** num_tasks)
  return ((codes[:, None] >> np.arange(num_tasks)) & 1).astype(np.float32)


def _simplex_qp_exact(quadratic: jax.Array, linear: jax.Array) -> jax.Array:
  """``argmin_{w in simplex} w.Q.w + 2 w.b`` (``Q`` PSD) by enumerating the supports.

  On each support the equality-constrained minimiser solves a KKT linear system; the optimum's
  support is the one whose solution also meets the remaining optimality conditions (weights >= 0,
  and no task outside the support with a lower gradient ``(Q w + b)_t`` than the multiplier). The
  candidate that violates these least is chosen: violations are first-order in the error, so this
  resolves the optimum to float32's precision, where comparing objective values (second-order near
  the optimum) would only resolve it to its square root. Convexity makes any KKT point optimal, so
  dependent supports (singular systems) do no harm; one regular optimal support always exists.
  """
  num_tasks = quadratic.shape[0]
  # Scaling keeps the KKT matrix's blocks comparable; the minimiser is unchanged.
  scale = jnp.maximum(jnp.max(jnp.abs(quadratic)), jnp.max(jnp.abs(linear)))
  scale = jnp.where(scale > 0, scale, 1.0)
  quadratic, linear = quadratic / scale, linear / scale

  def candidate(mask):
    kkt = jnp.block([[quadratic * mask[:, None] * mask[None, :] + jnp.diag(1.0 - mask), mask[:, None]],
                     [mask[None, :], jnp.zeros((1, 1), jnp.float32)]])
    solution = jnp.linalg.solve(kkt, jnp.concatenate([-linear * mask, jnp.ones((1,), jnp.float32)]))
    weights, multiplier = solution[:num_tasks] * mask, solution[num_tasks]
    # On the support (Q w + b)_t = -multiplier; off it, optimality needs (Q w + b)_t >= -multiplier.
    slack = quadratic @ weights + linear + multiplier
    violation = jnp.max(jnp.concatenate([
        jnp.maximum(-weights, 0.0), jnp.abs(slack) * mask, jnp.maximum(-slack, 0.0) * (1.0 - mask),
        jnp.abs(jnp.sum(weights) - 1.0)[None]]))
    violation = jnp.where(jnp.all(jnp.isfinite(solution)), violation, jnp.inf)
    return weights, violation

  weights, violations = jax.vmap(candidate)(jnp.asarray(_support_masks(num_tasks)))
  best = jnp.maximum(weights[jnp.argmin(violations)], 0.0)
  return best / jnp.sum(best)


def _project_to_simplex(vector: jax.Array) -> jax.Array:
  """Euclidean projection onto the probability simplex (sort-based, Held et al. 1974)."""
  size = vector.shape[0]
  sorted_desc = jnp.sort(vector)[::-1]
  cumulative = jnp.cumsum(sorted_desc) - 1.0
  positive = sorted_desc - cumulative / jnp.arange(1, size + 1) > 0
  count = jnp.sum(positive)
  threshold = cumulative[count - 1] / count
  return jnp.maximum(vector - threshold, 0.0)


def _simplex_qp_iterative(quadratic: jax.Array, linear: jax.Array, iterations: int) -> jax.Array:
  """The same QP for more than the exact solver's tasks: projected gradient from the uniform weights
  at step ``1 / L`` (``L = 2 ||Q||_2``, the gradient's Lipschitz constant), which guarantees
  ``f(w_k) - f* <= L ||w_0 - w*||^2 / (2 k) <= 2 ||Q||_2 / k``. A step that would not lower the
  objective (float32 rounding near the optimum) is refused and the step halved, so it never cycles."""
  num_tasks = quadratic.shape[0]
  objective = lambda w: w @ quadratic @ w + 2.0 * w @ linear

  def step(_, carry):
    weights, step_size = carry
    candidate = _project_to_simplex(weights - step_size * 2.0 * (quadratic @ weights + linear))
    accept = objective(candidate) <= objective(weights)
    return jnp.where(accept, candidate, weights), jnp.where(accept, step_size, 0.5 * step_size)

  start = jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32)
  weights, _ = jax.lax.fori_loop(0, iterations, step, (start, 1.0 / (2.0 * jnp.linalg.norm(quadratic, 2) + EPSILON)))
  return weights


def simplex_qp(quadratic: jax.Array, linear: jax.Array, iterations: int = 500,
               max_exact_tasks: int = MAX_EXACT_TASKS) -> jax.Array:
  """``[tasks]`` weights on the simplex minimising ``w.Q.w + 2 w.b``: exact up to
  ``max_exact_tasks`` tasks, ``iterations`` projected-gradient steps beyond."""
  if quadratic.shape[0] == 1:
    return jnp.ones((1,), jnp.float32)
  if quadratic.shape[0] <= max_exact_tasks:
    return _simplex_qp_exact(quadratic, linear)
  return _simplex_qp_iterative(quadratic, linear, iterations)


def min_norm_weights(gram: jax.Array | CentredGram, iterations: int = 500) -> jax.Array:
  """``[tasks]`` weights on the simplex of the minimum-norm point of the gradients' convex hull.

  Minimises ``||m + sum_i w_i d_i||^2`` in the centred form (``base.CentredGram``; a Gram matrix is
  converted, which loses the precision of nearly parallel gradients), exactly for up to
  ``MAX_EXACT_TASKS`` tasks (``simplex_qp``). Sener & Koltun's Frank-Wolfe solver, and a projected
  gradient that compares ``w.G.w`` in float32, stall on nearly parallel gradients, where every step's
  improvement is below float32's resolution of ``||m||^2``.
  """
  centred = gram if isinstance(gram, CentredGram) else centred_from_gram(gram)
  return simplex_qp(centred.deviations, centred.cross, iterations)


def mgda(normalisation: str = "none", iterations: int = 500) -> Balancer:
  """MGDA-UB (Sener & Koltun, NeurIPS 2018): the minimum-norm convex combination of the task gradients.

  The weights solve ``min_{w in simplex} ||sum_i w_i g_i / n_i||`` where ``n_i`` is the gradient
  normalisation of their code: ``"none"`` (1), ``"l2"`` (``||g_i||``), ``"loss"`` (``L_i``) or
  ``"loss+"`` (``L_i ||g_i||``); as there, the weights then multiply the raw gradients (losses). The
  weights sum to 1, so the combined gradient is on the scale of one task's, not of their sum.
  "UB" (the upper bound) is the representation mode of ``base``: pass each task's gradient of the
  shared representation and back-propagate ``sum_i w_i L_i``. ``iterations`` matters only beyond
  ``MAX_EXACT_TASKS`` tasks (``simplex_qp``).
  """
  if normalisation not in MGDA_NORMALISATIONS:
    raise ValueError(f"unknown mgda normalisation {normalisation!r}; known: {', '.join(MGDA_NORMALISATIONS)}")

  def init(num_tasks: int, shared_params=None):
    del num_tasks, shared_params
    return ()

  def update(task_losses, task_grads, state):
    grads = jax.lax.stop_gradient(task_grads)
    grad_norms = jnp.sqrt(squared_norms(grads))
    losses = jax.lax.stop_gradient(task_losses.astype(jnp.float32))
    scale = {"none": jnp.ones_like(losses), "l2": grad_norms, "loss": losses,
             "loss+": losses * grad_norms}[normalisation]
    weights = min_norm_weights(centred_gram(grads, jnp.maximum(scale, EPSILON)), iterations)
    return finish(weights, task_grads, state)

  return Balancer(init, update)


class PCGradState(NamedTuple):
  key: jax.Array  # the random order of projections of the next update is drawn from it


def pcgrad(seed: int = 0) -> Balancer:
  """PCGrad, gradient surgery (Yu et al., NeurIPS 2020).

  Each task gradient ``g_i`` is projected, in a random order of the tasks, onto the normal plane of
  every original gradient ``g_j`` it conflicts with (``g_i' . g_j < 0``:
  ``g_i' -= (g_i' . g_j / ||g_j||^2) g_j``); the combined gradient is the sum of the projected ones.
  As in the authors' code the order is a shuffle of all tasks, the task itself included: projections
  onto other tasks' planes can turn ``g_i'`` against ``g_i``, and the step at ``g_i`` then removes that
  opposing component too. The orders come from a key in the state: the same ``seed`` gives the same
  sequence of updates.
  """

  def init(num_tasks: int, shared_params=None):
    del num_tasks, shared_params
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


# Bisection steps on CAGrad's scalar in (0, 1] (below): each halves its bracket; float32 resolves 2^-24.
_CAGRAD_BISECTIONS = 26
# CAGrad solves one simplex QP per bisection step: exactly (2^tasks - 1 linear solves each) up to this
# many tasks, ~3 ms per update for 5 tasks and ~25 ms for 9 on 2 CPU cores; iteratively beyond.
CAGRAD_MAX_EXACT_TASKS = 9


def cagrad_weights(gram: jax.Array | CentredGram, c: float, iterations: int = 500) -> jax.Array:
  """``[tasks]`` weights on the simplex minimising CAGrad's dual ``g_w . g0 + k ||g_w||``, ``k = c ||g0||``.

  ``g0`` is the mean gradient and ``g_w = sum_i w_i g_i``. The authors solve it with SLSQP, and a
  fixed-step gradient method stalls near the kink where ``||g_w||`` is small. Here the norm is written
  as ``||g_w|| = min_{lam > 0} (||g_w||^2 / lam + lam) / 2``: for fixed ``lam`` the minimum over ``w``
  is a simplex QP (``simplex_qp``, exact for up to ``CAGRAD_MAX_EXACT_TASKS`` tasks), and the joint problem
  is convex, so the optimal ``lam = ||g_w(lam)||`` is found by bisection on the sign of
  ``lam - ||g_w(lam)||`` (monotone by convexity). In the centred form (``base.CentredGram``) the QP
  for ``lam = t k`` is ``min s w.D.w + 2 w.cross`` with ``s = 1 / (1 + t)`` in (0, 1], bisected.
  """
  centred = gram if isinstance(gram, CentredGram) else centred_from_gram(gram)
  radius = c * jnp.sqrt(centred.mean_sq)

  def solve(shrink):
    return simplex_qp(shrink * centred.deviations, centred.cross, iterations, CAGRAD_MAX_EXACT_TASKS)

  def bisect(_, bracket):
    low, high = bracket
    shrink = (low + high) / 2
    weights = solve(shrink)
    norm_sq = centred.mean_sq + 2.0 * weights @ centred.cross + weights @ centred.deviations @ weights
    lam = (1.0 / shrink - 1.0) * radius
    # lam above ||g_w(lam)||: lam is too large, i.e. the shrink factor too small.
    too_small = lam * lam > norm_sq
    return jnp.where(too_small, shrink, low), jnp.where(too_small, high, shrink)

  low, high = jax.lax.fori_loop(0, _CAGRAD_BISECTIONS, bisect, (jnp.float32(0.0), jnp.float32(1.0)))
  return solve((low + high) / 2)


def cagrad(c: float = 0.5, rescale: int = 1, iterations: int = 500) -> Balancer:
  """Conflict-Averse Gradient descent (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021).

  The direction ``d = g0 + c ||g0|| g_w / ||g_w||``, with ``g0`` the mean task gradient and ``w``
  from ``cagrad_weights``, maximises the worst task's improvement ``min_i g_i . d`` within the ball
  ``||d - g0|| <= c ||g0||``. ``c = 0`` is plain gradient descent on the mean loss. ``rescale`` as in
  the authors' code: 0 returns ``d``, 1 returns ``d / (1 + c^2)`` (default), 2 ``d / (1 + c)``.
  ``iterations`` matters only beyond ``CAGRAD_MAX_EXACT_TASKS`` tasks (``simplex_qp``).
  """
  if c < 0:
    raise ValueError(f"cagrad c must be >= 0, got {c}")
  if rescale not in (0, 1, 2):
    raise ValueError(f"cagrad rescale must be 0, 1 or 2, got {rescale}")

  def init(num_tasks: int, shared_params=None):
    del num_tasks, shared_params
    return ()

  def update(task_losses, task_grads, state):
    num_tasks = num_tasks_of(task_losses)
    centred = centred_gram(jax.lax.stop_gradient(task_grads))
    mean_weights = jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32)
    dual_weights = cagrad_weights(centred, c, iterations)
    mean_norm = jnp.sqrt(centred.mean_sq)
    dual_norm_sq = (centred.mean_sq + 2.0 * dual_weights @ centred.cross
                    + dual_weights @ centred.deviations @ dual_weights)
    # Where g_w vanishes (0 in the hull) its direction is undefined; the floor keeps the step finite.
    dual_norm = jnp.sqrt(jnp.maximum(dual_norm_sq, 1e-12 * centred.mean_sq + EPSILON))
    weights = mean_weights + (c * mean_norm / dual_norm) * dual_weights
    weights = weights / {0: 1.0, 1: 1.0 + c ** 2, 2: 1.0 + c}[rescale]
    return finish(weights, task_grads, state, dual_weights=dual_weights)

  return Balancer(init, update)


# A task whose gradient norm is below this fraction of the largest has no direction for IMTL-G.
IMTL_VANISHING = 1e-6


def imtl_g_weights(gram: jax.Array) -> tuple[jax.Array, jax.Array]:
  """IMTL-G's ``[tasks]`` weights and the ``[tasks]`` mask of tasks it balanced (non-vanishing ones).

  Solves, over the tasks whose gradients do not vanish, ``g_w . u_i = mu`` for every such ``i``
  (``u_i = g_i / ||g_i||``) with ``sum_i w_i = 1``: the paper's closed form ``w_{2:} = g_1 U^T
  (D U^T)^{-1}`` is this system's solution with task 1 eliminated. A vanishing gradient has no unit
  vector; left in, its equation forces all the weight onto it and the shared parameters get no update,
  so such tasks are left out of the system and weighted ``1 / tasks`` (their decoders still train;
  their shared gradient is zero). The pseudo-inverse keeps the weights finite when two gradients are
  parallel (any split between them is then impartial).
  """
  num_tasks = gram.shape[0]
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  active = norms > IMTL_VANISHING * jnp.max(norms)
  inverse_norms = jnp.where(active, 1.0 / jnp.where(active, norms, 1.0), 0.0)
  # Row i (active): sum_j w_j (g_j . u_i) - mu = 0; inactive: w_i = 0; last row: sum_j w_j = 1.
  projections = gram.T * inverse_norms[:, None] * active[None, :]
  rows = jnp.where(active[:, None], projections, jnp.eye(num_tasks))
  system = jnp.block([[rows, -active[:, None].astype(jnp.float32)],
                      [active[None, :].astype(jnp.float32), jnp.zeros((1, 1), jnp.float32)]])
  rhs = jnp.zeros((num_tasks + 1,), jnp.float32).at[-1].set(1.0)
  weights = (jnp.linalg.pinv(system) @ rhs)[:num_tasks]
  any_active = jnp.any(active)
  weights = jnp.where(active, weights, 1.0 / num_tasks)
  return jnp.where(any_active, weights, 1.0 / num_tasks), active


def imtl_g() -> Balancer:
  """IMTL-G, impartial gradient balancing (Liu et al., ICLR 2021): the weights (summing to 1) whose
  combination ``g = sum_i w_i g_i`` has the same projection onto every unit task gradient
  (``imtl_g_weights``, which also handles vanishing task gradients); ``info["balanced"]`` marks the
  tasks that took part."""

  def init(num_tasks: int, shared_params=None):
    del num_tasks, shared_params
    return ()

  def update(task_losses, task_grads, state):
    num_tasks = num_tasks_of(task_losses)
    if num_tasks == 1:
      return finish(jnp.ones((1,), jnp.float32), task_grads, state, balanced=jnp.ones((1,), bool))
    weights, active = imtl_g_weights(gram_matrix(jax.lax.stop_gradient(task_grads)))
    return finish(weights, task_grads, state, balanced=active)

  return Balancer(init, update)


def imtl(learning_rate: float = 1e-2, optimizer=None) -> Balancer:
  """IMTL, the hybrid of IMTL-L and IMTL-G (Liu et al., ICLR 2021): the losses are scaled by
  ``exp(s_i)`` (learned as in ``weighting.imtl_l``), and IMTL-G balances the scaled losses' gradients
  ``exp(s_i) g_i``: the weights on the raw gradients are ``alpha_i exp(s_i)``."""
  init_scales, step_scales = learned_loss_scales(optimizer or optax.adam(learning_rate))

  def update(task_losses, task_grads, state):
    scales, new_state = step_scales(task_losses, state)
    gram = gram_matrix(jax.lax.stop_gradient(task_grads))
    alpha, active = imtl_g_weights(gram * scales[:, None] * scales[None, :])
    return finish(alpha * scales, task_grads, new_state, balanced=active, loss_scales=scales)

  return Balancer(init_scales, update)


def nash_weights(gram: jax.Array, iterations: int = 30) -> jax.Array:
  """``[tasks]`` positive ``alpha`` solving Nash-MTL's bargaining condition ``G' alpha = 1 / alpha``.

  ``G' = G / ||G||_F`` as in the authors' code (so ``alpha`` is independent of the gradients' scale).
  The condition is the stationarity of the strictly convex ``alpha.G'.alpha / 2 - sum_i log alpha_i``,
  which is self-concordant: damped Newton (step ``1 / (1 + decrement)`` while the Newton decrement is
  above 1/4, full steps after) stays inside ``alpha > 0`` and converges quadratically from
  ``alpha = 1 / sqrt(diag G')``; the authors linearise it and call a convex solver per iteration. No solution exists when a positive combination of the gradients vanishes (no update
  helps every task); ``alpha`` then grows with ``iterations``.
  """
  normalised = gram / jnp.maximum(jnp.linalg.norm(gram), EPSILON)
  start = 1.0 / jnp.sqrt(jnp.maximum(jnp.diag(normalised), EPSILON))

  def newton(_, alpha):
    gradient = normalised @ alpha - 1.0 / alpha
    hessian = normalised + jnp.diag(1.0 / alpha ** 2)
    step = -jnp.linalg.solve(hessian, gradient)
    decrement = jnp.sqrt(jnp.maximum(-gradient @ step, 0.0))
    fraction = jnp.where(decrement > 0.25, 1.0 / (1.0 + decrement), 1.0)
    return jnp.where(jnp.all(jnp.isfinite(step)), alpha + fraction * step, alpha)

  return jax.lax.fori_loop(0, iterations, newton, start)


def nash_mtl(iterations: int = 30) -> Balancer:
  """Nash-MTL (Navon et al., ICML 2022): the direction ``sum_i alpha_i g_i`` with ``alpha`` the Nash
  bargaining solution, ``G' alpha = 1 / alpha`` (``nash_weights``): every task's share of the update,
  ``alpha_i g_i . d``, is the same.

  The weights are ``alpha`` rescaled to sum to the number of tasks (``info["alpha"]`` keeps the
  solution): Nash's direction at equal weighting's scale. The scale is not the method's choice to
  make under SGD: ``alpha`` grows without bound as a positive combination of the gradients nears
  zero (200 times equal weighting's when two gradients are 0.01 from opposite), the task-specific
  parameters' gradients are multiplied by it, and at the paper's learning rate such a network
  diverged within 25 steps. The authors bound only the shared update (its norm clipped to 1,
  under Adam, where a gradient's scale matters little).
  """

  def init(num_tasks: int, shared_params=None):
    del num_tasks, shared_params
    return ()

  def update(task_losses, task_grads, state):
    alpha = nash_weights(gram_matrix(jax.lax.stop_gradient(task_grads)), iterations)
    weights = num_tasks_of(task_losses) * alpha / jnp.sum(alpha)
    return finish(weights, task_grads, state, alpha=alpha)

  return Balancer(init, update)


def aligned_mtl_weights(gram: jax.Array) -> jax.Array:
  """Aligned-MTL's ``[tasks]`` weights: with ``G = V diag(lambda) V^T`` (the eigenvalues above
  ``max(lambda) tasks eps``), ``B = sqrt(lambda_min) V diag(lambda)^{-1/2} V^T`` turns the gradients
  into orthogonal ones of equal norm ``sqrt(lambda_min)`` spanning the same space, and ``w = B 1``
  sums them with unit task weights."""
  eigenvalues, vectors = jnp.linalg.eigh(gram)
  tolerance = jnp.max(eigenvalues) * gram.shape[0] * jnp.finfo(jnp.float32).eps
  kept = eigenvalues > tolerance
  smallest = jnp.min(jnp.where(kept, eigenvalues, jnp.inf))
  inverse_sqrt = jnp.where(kept, 1.0 / jnp.sqrt(jnp.where(kept, eigenvalues, 1.0)), 0.0)
  whitening = jnp.sqrt(jnp.where(jnp.any(kept), smallest, 0.0)) * (vectors * inverse_sqrt) @ vectors.T
  return jnp.sum(whitening, axis=0)


def aligned_mtl() -> Balancer:
  """Aligned-MTL (Senushkin, Patakin, Kuznetsov & Konushin, CVPR 2023): aligns the principal
  components of the task gradients' linear system (``aligned_mtl_weights``), which removes both
  conflicts and dominance: the combined gradient has an equal component along every direction the
  gradients span."""

  def init(num_tasks: int, shared_params=None):
    del num_tasks, shared_params
    return ()

  def update(task_losses, task_grads, state):
    del task_losses
    return finish(aligned_mtl_weights(gram_matrix(jax.lax.stop_gradient(task_grads))), task_grads, state)

  return Balancer(init, update)


class GradVacState(NamedTuple):
  targets: jax.Array  # [tasks, tasks] phi_hat[i, j]: the moving target of cos(g_i, g_j)
  key: jax.Array  # the random orders of the next update are drawn from it


def gradvac(beta: float = 0.01, seed: int = 0) -> Balancer:
  """Gradient Vaccine (Wang, Tsvetkov, Firat & Cao, ICLR 2021), over all shared parameters at once.

  Each task gradient ``g_i'`` (starting at ``g_i``) visits the other tasks ``j`` in a random order;
  where its cosine ``phi`` with ``g_j`` falls below the target ``phi_hat_ij``, it takes the step
  ``g_i' += g_j ||g_i'|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) / (||g_j|| sqrt(1 -
  phi_hat^2))``, after which its cosine with ``g_j`` is exactly ``phi_hat``. The combined gradient is
  the sum of the ``g_i'``. Targets start at 0, where the step is PCGrad's projection.

  The targets are the paper's moving average of the gradient similarity along the trajectory: after
  every update ``phi_hat_ij <- (1 - beta) phi_hat_ij + beta cos(g_i, g_j)``, of the task gradients as
  computed, whether or not a step was taken. Two readings of other code are avoided on purpose:
  LibMTL moves a target only when a step is taken, towards a cosine below it, so targets never rise
  above 0 and the method is a weaker PCGrad; and averaging the vaccinated ``g_i'`` instead would let
  earlier steps raise the targets they are then held to. A vaccinated gradient is longer by
  ``sqrt(1 - phi^2) / sqrt(1 - phi_hat^2)``, so a target near 1 that follows single batches
  (LibMTL's default ``beta`` 0.5) multiplies task gradients whenever one batch's cosine dips; the
  default 0.01 averages over ~100 steps.
  """
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"gradvac beta must be in [0, 1], got {beta}")

  def init(num_tasks: int, shared_params=None):
    del shared_params
    return GradVacState(jnp.zeros((num_tasks, num_tasks), jnp.float32), jax.random.key(seed))

  def update(task_losses, task_grads, state):
    num_tasks = num_tasks_of(task_losses)
    gram = gram_matrix(jax.lax.stop_gradient(task_grads))
    norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
    key, order_key = jax.random.split(state.key)
    orders = jax.vmap(lambda k: jax.random.permutation(k, num_tasks))(jax.random.split(order_key, num_tasks))

    def vaccinate(task, order, targets):
      # coefficients[k]: g_i' = sum_k coefficients[k] g_k; targets: row i of phi_hat.
      def step(position, coefficients):
        other = order[position]
        norm = jnp.sqrt(jnp.maximum(coefficients @ gram @ coefficients, 0.0))
        cosine = (coefficients @ gram[:, other]) / (norm * norms[other] + 1e-8)
        target = targets[other]
        amount = norm * (target * jnp.sqrt(1.0 - cosine ** 2) - cosine * jnp.sqrt(1.0 - target ** 2)) / (
            norms[other] * jnp.sqrt(1.0 - target ** 2) + 1e-8)
        applies = (other != task) & (cosine < target)
        return coefficients.at[other].add(jnp.where(applies, amount, 0.0))
      return jax.lax.fori_loop(0, num_tasks, step, jax.nn.one_hot(task, num_tasks, dtype=jnp.float32))

    coefficients = jax.vmap(vaccinate)(jnp.arange(num_tasks), orders, state.targets)
    cosines = gram / (norms[:, None] * norms[None, :] + 1e-8)
    off_diagonal = ~jnp.eye(num_tasks, dtype=bool)
    targets = jnp.where(off_diagonal, (1 - beta) * state.targets + beta * cosines, state.targets)
    return finish(jnp.sum(coefficients, axis=0), task_grads, GradVacState(targets, key),
                  vaccinated_coefficients=coefficients)

  return Balancer(init, update)
