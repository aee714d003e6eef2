"""Balancing methods against known answers: closed forms, optimality conditions, toy convergence."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

from tg_jax import balancing
from tg_jax.balancing import gradient as gradient_lib
from tg_jax.balancing.gradient import cagrad_weights, min_norm_weights

FLOAT32_EPS = float(np.finfo(np.float32).eps)


def _grads_tree(matrix):
  """A two-leaf pytree whose flattened task gradients are the rows of ``matrix`` ([tasks, 6])."""
  matrix = jnp.asarray(matrix, jnp.float32)
  return {"kernel": matrix[:, :4].reshape(-1, 2, 2), "bias": matrix[:, 4:]}


def _flat(tree):
  return np.concatenate([np.asarray(tree["kernel"]).reshape(-1), np.asarray(tree["bias"]).reshape(-1)])


def _run(balancer, losses, grad_matrix, state=None):
  """One jitted update from a fresh (or the given) state; compiled once per balancer and shape."""
  losses = jnp.asarray(losses, jnp.float32)
  tree = _grads_tree(grad_matrix)
  state = balancer.init(len(losses), jax.tree_util.tree_map(lambda x: x[0], tree)) if state is None else state
  if balancer not in _JITTED:
    _JITTED[balancer] = jax.jit(balancer.update)
  combined, state, info = _JITTED[balancer](losses, tree, state)
  return _flat(combined), state, info


_JITTED = {}


def test_the_shelf_holds_sixteen_or_more_methods():
  assert len(balancing.names()) >= 16
  assert [n for n in balancing.names() if not balancing.combines_linearly(n)] == ["db_mtl", "graddrop"]


@pytest.mark.parametrize("name", [n for n in balancing.names() if balancing.combines_linearly(n)])
def test_every_linear_method_combines_task_gradients_with_its_reported_weights(name):
  grads = np.random.default_rng(1).normal(size=(3, 6))
  combined, _, info = _run(balancing.get(name), [1.0, 2.0, 0.5], grads)
  assert info["weights"].shape == (3,)
  np.testing.assert_allclose(combined, np.asarray(info["weights"]) @ grads, rtol=1e-5, atol=1e-6)


def test_registry_errors_name_the_fix():
  with pytest.raises(KeyError, match="known methods: aligned_mtl, cagrad, db_mtl, dwa, equal"):
    balancing.get("gradnrom")
  with pytest.raises(TypeError, match="options are: alpha, learning_rate, optimizer"):
    balancing.get("gradnorm", alhpa=1.0)


def test_equal_is_the_sum_of_the_task_gradients():
  """LibMTL's convention (weights on the sum of the losses); the trainer's division by the number of
  tasks makes it the paper's mean (tests/test_methods_training.py)."""
  grads = np.arange(18.0).reshape(3, 6)
  combined, _, info = _run(balancing.get("equal"), [3.0, 4.0, 5.0], grads)
  np.testing.assert_allclose(combined, grads.sum(0), rtol=1e-6)
  np.testing.assert_allclose(info["weights"], [1.0, 1.0, 1.0])


def test_mgda_two_tasks_is_the_closed_form_min_norm_point():
  rng = np.random.default_rng(0)
  balancer = balancing.get("mgda")
  for _ in range(20):
    g1, g2 = rng.normal(size=(2, 6)) * rng.uniform(0.1, 5.0, size=(2, 1))
    combined, _, info = _run(balancer, [1.0, 1.0], np.stack([g1, g2]))
    a = np.clip((g2 - g1) @ g2 / np.sum((g1 - g2) ** 2), 0.0, 1.0)
    np.testing.assert_allclose(info["weights"], [a, 1 - a], atol=1e-5)
    np.testing.assert_allclose(combined, a * g1 + (1 - a) * g2, rtol=1e-4, atol=1e-5)
    # No point of the segment is shorter.
    grid = np.linspace(0, 1, 2001)[:, None]
    assert np.linalg.norm(combined) <= np.min(np.linalg.norm(grid * g1 + (1 - grid) * g2, axis=1)) + 1e-5


def test_mgda_many_tasks_satisfies_the_min_norm_optimality_conditions():
  # w minimises w.G.w on the simplex iff (G w)_t >= w.G.w for every t, with equality where w_t > 0.
  rng = np.random.default_rng(2)
  solve = jax.jit(min_norm_weights)
  for num_tasks in (3, 5):
    for _ in range(10):
      grads = rng.normal(size=(num_tasks, 4)) + rng.normal(size=4)
      gram = grads @ grads.T
      weights = np.asarray(solve(jnp.asarray(gram, jnp.float32)))
      assert np.all(weights >= -1e-7) and abs(weights.sum() - 1) < 1e-5
      value = weights @ gram @ weights
      directional = gram @ weights
      scale = np.max(np.abs(gram))
      # The solver is one float32 linear solve on the optimum's support (cond(G) here < 1e3): the conditions
      # hold to about eps * cond of the scale. Equal weights miss by over 6e-2.
      assert np.all(directional >= value - 1e-4 * scale)
      assert np.all(np.abs(directional[weights > 1e-3] - value) <= 1e-4 * scale)


def _min_norm_reference(grads):
  """float64: the min-norm point's weights, by enumerating supports and keeping the one whose KKT
  solution certifies optimality (w >= 0, (G w)_t >= w.G.w for every t)."""
  gram = grads @ grads.T
  num_tasks, scale = len(gram), np.max(np.abs(gram))
  for size in range(1, num_tasks + 1):
    for support in map(list, itertools.combinations(range(num_tasks), size)):
      kkt = np.block([[gram[np.ix_(support, support)], np.ones((size, 1))], [np.ones((1, size)), np.zeros((1, 1))]])
      if abs(np.linalg.det(kkt)) < 1e-300:
        continue
      weights = np.zeros(num_tasks)
      weights[support] = np.linalg.solve(kkt, np.r_[np.zeros(size), 1.0])[:size]
      if np.all(weights >= -1e-12) and np.all(gram @ weights >= weights @ gram @ weights - 1e-10 * scale):
        return weights
  raise AssertionError("no support certifies optimality")


def _hard_cases(rng):
  """(name, [tasks, 8] gradients, normalisation): the cases where the old solvers stalled."""
  for _ in range(5):
    direction = rng.normal(size=8)
    parallel = direction / np.linalg.norm(direction) + 1e-2 * rng.normal(size=(3, 8))
    yield "nearly parallel", parallel * rng.uniform(0.5, 2.0, size=(3, 1)), "l2"
  for _ in range(5):  # six tasks spanning a plane; the hull misses the origin
    yield "rank 2", (rng.normal(size=(6, 2)) + [2.0, 0.0]) @ rng.normal(size=(2, 8)), "none"
  for _ in range(3):
    grads = rng.normal(size=(4, 8))
    grads[rng.integers(4)] = 0.0
    yield "one vanishing", grads, "none"
  for _ in range(3):
    grads = rng.normal(size=(4, 8)) + rng.normal(size=8)
    grads[0] /= 600.0
    yield "600x norms", grads, "none"


def test_mgda_matches_an_exact_float64_solution_on_hard_cases():
  """Nearly parallel l2-normalised gradients stalled the old float32 solver at its best-pair start
  (0.3 off in the weights, 13% in the update)."""
  rng = np.random.default_rng(10)
  for name, grads, normalisation in _hard_cases(rng):
    grads = grads.astype(np.float32).astype(np.float64)  # the exact problem the solver sees
    combined, _, info = _run(balancing.get("mgda", normalisation=normalisation), np.ones(len(grads)), grads)
    scaled = grads / np.linalg.norm(grads, axis=1, keepdims=True) if normalisation == "l2" else grads
    weights = _min_norm_reference(scaled)
    # The solver is a direct linear solve; its error is float32 rounding of its inputs amplified by the
    # conditioning: nearly parallel gradients at a spread of 1e-2 move the weights by eps / 1e-2^2 ~ 1e-3 of
    # their own rounding (measured 1.5e-4; the update 5e-5 of its norm). Elsewhere ~1e-6.
    tolerance = 2e-3 if name == "nearly parallel" else 1e-4
    scale = np.max(np.linalg.norm(grads, axis=1))
    assert np.linalg.norm(combined - weights @ grads) <= tolerance * scale, name
    if name != "rank 2":  # six points in a plane: the weights of the min-norm point are not unique
      np.testing.assert_allclose(info["weights"], weights, atol=tolerance, err_msg=name)


def test_more_tasks_than_the_exact_solvers_take_meet_projected_gradients_guarantee():
  """Beyond MAX_EXACT_TASKS (MGDA) and CAGRAD_MAX_EXACT_TASKS the QPs run 500 projected-gradient steps at
  1 / L, whose objective gap is at most 2 ||Q||_2 / 500: the min-norm point's squared error is at most that
  gap (the objective is ||g_w||^2), and CAGrad's dual is within its QPs' gaps of SLSQP's."""
  rng = np.random.default_rng(17)
  num_tasks = gradient_lib.MAX_EXACT_TASKS + 2
  grads = (rng.normal(size=(num_tasks, 6)) + rng.normal(size=6)).astype(np.float32).astype(np.float64)
  combined, _, _ = _run(balancing.get("mgda"), np.ones(num_tasks), grads)
  weights = _min_norm_reference(grads)
  gap = np.sum(combined ** 2) - np.sum((weights @ grads) ** 2)
  bound = 2 * np.linalg.norm(grads @ grads.T, 2) / 500
  assert -1e-5 * bound <= gap <= bound
  num_tasks = gradient_lib.CAGRAD_MAX_EXACT_TASKS + 2
  grads = rng.normal(size=(num_tasks, 20)) * rng.uniform(0.2, 5.0, size=(num_tasks, 1))
  gram = grads @ grads.T
  mean = np.full(num_tasks, 1.0 / num_tasks)
  g0_norm = np.sqrt(mean @ gram @ mean)
  weights = np.asarray(jax.jit(cagrad_weights, static_argnums=1)(jnp.asarray(gram, jnp.float32), 0.5))
  dual = lambda w: w @ gram @ mean + 0.5 * g0_norm * np.sqrt(w @ gram @ w + 1e-8)
  reference = scipy.optimize.minimize(dual, mean, bounds=[(0, 1)] * num_tasks, method="SLSQP",
                                      constraints={"type": "eq", "fun": lambda w: 1 - w.sum()})
  assert dual(weights) <= reference.fun + 1e-4 * g0_norm ** 2  # measured 1e-5; SLSQP's own precision ~1e-6


def test_mgda_normalisation_solves_on_scaled_gradients():
  # Orthogonal gradients of norms 1 and 10. Normalised to unit vectors (l2), the min-norm point is
  # their midpoint, (1/2, 1/2); raw, it is the foot of the perpendicular from 0, (100, 1) / 101.
  grads = np.zeros((2, 6))
  grads[0, 0], grads[1, 1] = 1.0, 10.0
  _, _, info = _run(balancing.get("mgda", normalisation="l2"), [1.0, 1.0], grads)
  np.testing.assert_allclose(info["weights"], [0.5, 0.5], atol=1e-6)
  _, _, info = _run(balancing.get("mgda"), [1.0, 1.0], grads)
  np.testing.assert_allclose(info["weights"], [100 / 101, 1 / 101], atol=1e-6)
  with pytest.raises(ValueError, match="known: none, l2, loss, loss\\+"):
    balancing.get("mgda", normalisation="L2")


def test_pcgrad_two_conflicting_tasks():
  """Proves, for two tasks with g1.g2 < 0: each projected gradient is orthogonal to the other task's
  gradient, the result is the closed form, and it has a non-negative inner product with both task
  gradients (no task's loss increases to first order)."""
  rng = np.random.default_rng(3)
  balancer = balancing.get("pcgrad")
  checked = 0
  for _ in range(30):
    g1, g2 = rng.normal(size=(2, 6))
    dot = g1 @ g2
    if dot >= 0:
      continue
    checked += 1
    combined, _, info = _run(balancer, [1.0, 1.0], np.stack([g1, g2]))
    projected = np.asarray(info["projection_coefficients"]) @ np.stack([g1, g2])
    assert abs(projected[0] @ g2) < 1e-4 and abs(projected[1] @ g1) < 1e-4
    expected = g1 - dot / (g2 @ g2) * g2 + g2 - dot / (g1 @ g1) * g1
    np.testing.assert_allclose(combined, expected, rtol=1e-4, atol=1e-5)
    assert combined @ g1 >= -1e-5 and combined @ g2 >= -1e-5
  assert checked >= 5


def test_pcgrad_leaves_agreeing_gradients_alone_and_is_deterministic_per_seed():
  grads = np.abs(np.random.default_rng(4).normal(size=(4, 6)))  # all inner products positive
  combined, _, _ = _run(balancing.get("pcgrad"), np.ones(4), grads)
  np.testing.assert_allclose(combined, grads.sum(0), rtol=1e-5)
  conflicting = np.random.default_rng(5).normal(size=(4, 6))
  first = _run(balancing.get("pcgrad", seed=7), np.ones(4), conflicting)
  again = _run(balancing.get("pcgrad", seed=7), np.ones(4), conflicting)
  np.testing.assert_array_equal(first[0], again[0])
  # The state carries the key forward: the next update draws new orders.
  assert not np.array_equal(jax.random.key_data(first[1].key),
                            jax.random.key_data(balancing.get("pcgrad", seed=7).init(4).key))


def test_cagrad_with_c_zero_is_the_mean_gradient():
  grads = np.random.default_rng(6).normal(size=(3, 6))
  combined, _, _ = _run(balancing.get("cagrad", c=0.0), np.ones(3), grads)
  np.testing.assert_allclose(combined, grads.mean(0), rtol=1e-5, atol=1e-6)


def test_cagrad_dual_matches_slsqp_and_direction_solves_the_primal():
  rng = np.random.default_rng(7)
  solve = jax.jit(cagrad_weights)
  for num_tasks in (2, 3, 5):
    grads = rng.normal(size=(num_tasks, 6)) * rng.uniform(0.2, 5.0, size=(num_tasks, 1))
    gram = grads @ grads.T
    mean = np.full(num_tasks, 1.0 / num_tasks)
    g0_norm = np.sqrt(mean @ gram @ mean)
    for c in (0.3, 0.8):
      weights = np.asarray(solve(jnp.asarray(gram, jnp.float32), c))
      dual = lambda w: w @ gram @ mean + c * g0_norm * np.sqrt(w @ gram @ w + 1e-8)
      reference = scipy.optimize.minimize(dual, mean, bounds=[(0, 1)] * num_tasks,
                                          constraints={"type": "eq", "fun": lambda w: 1 - w.sum()})
      assert dual(weights) <= reference.fun + 1e-4 * g0_norm ** 2
  # Primal on a 2-D problem: d maximises min_i g_i.d over the ball ||d - g0|| <= c ||g0||.
  grads = np.array([[1.0, 0.2], [-0.6, 1.0]])
  c = 0.5
  padded = np.pad(grads, ((0, 0), (0, 4)))
  direction, _, _ = _run(balancing.get("cagrad", c=c, rescale=0), np.ones(2), padded)
  g0 = grads.mean(0)
  assert np.linalg.norm(direction[:2] - g0) == pytest.approx(c * np.linalg.norm(g0), rel=1e-4)
  angles = np.linspace(0, 2 * np.pi, 200001)
  boundary = g0 + c * np.linalg.norm(g0) * np.stack([np.cos(angles), np.sin(angles)], axis=1)
  best = np.max(np.min(boundary @ grads.T, axis=1))
  # The optimum is a kink of min_i g_i.d, so the dual weights' float32 precision shows to first order; the
  # angle grid's spacing (3e-5) costs ~1e-9. The mean weights are 0.18 off, c = 0.45 is 0.045 off.
  assert np.min(grads @ direction[:2]) == pytest.approx(best, rel=1e-4)
  rescaled, _, _ = _run(balancing.get("cagrad", c=c), np.ones(2), padded)
  np.testing.assert_allclose(rescaled, direction / (1 + c ** 2), rtol=1e-5)


def _cagrad_reference_in_a_plane(grads, c):
  """float64: CAGrad's direction for gradients spanning a plane, from its primal: the point of the
  circle ``g0 + c ||g0|| (cos a, sin a)`` in their span maximising ``min_i g_i . d`` (a fine grid of
  angles, then a bounded scalar search around the best)."""
  basis = np.linalg.qr(grads.T)[0][:, :2]
  mean = grads.mean(0)
  radius = c * np.linalg.norm(mean)
  direction = lambda angle: mean + radius * (basis @ np.array([np.cos(angle), np.sin(angle)]))
  worst = lambda angle: -np.min(grads @ direction(angle))
  angles = np.linspace(0, 2 * np.pi, 10001)
  start = angles[np.argmin([worst(a) for a in angles])]
  result = scipy.optimize.minimize_scalar(worst, bounds=(start - 1e-3, start + 1e-3), method="bounded",
                                          options={"xatol": 1e-13})
  return direction(result.x)


@pytest.mark.parametrize("c", [0.5, 0.9])
def test_cagrad_direction_matches_the_exact_primal_on_rank_deficient_cases(c):
  """Six tasks whose gradients span two dimensions: the old fixed-step solver's candidates were all
  rejected near the dual's kink, leaving the direction up to 0.15 (c = 0.5) and O(1) (c = 0.9) off."""
  rng = np.random.default_rng(11)
  balancer = balancing.get("cagrad", c=c, rescale=0)
  for _ in range(25):
    grads = (rng.normal(size=(6, 2)) @ rng.normal(size=(2, 8))).astype(np.float32).astype(np.float64)
    direction, _, info = _run(balancer, np.ones(6), grads)
    expected = _cagrad_reference_in_a_plane(grads, c)
    dual_norm = np.linalg.norm(np.asarray(info["dual_weights"], np.float64) @ grads)
    # The dual is solved from the Gram matrix, where ||g_w||^2 comes out of terms of size ||g0||^2: its
    # float32 rounding, eps (||g0|| / ||g_w||)^2 relative, turns the direction g_w / ||g_w|| by as much
    # (measured up to 1.6e-3 at ||g_w|| = ||g0|| / 120). The old solver missed by 1e-1 at ||g_w|| ~ ||g0||.
    tolerance = 1e-5 + 20 * FLOAT32_EPS * (np.linalg.norm(grads.mean(0)) / dual_norm) ** 2
    assert np.linalg.norm(direction - expected) <= tolerance * np.linalg.norm(expected)


def test_imtl_g_projects_equally_onto_every_unit_task_gradient():
  rng = np.random.default_rng(8)
  balancer = balancing.get("imtl_g")
  for num_tasks in (2, 3, 4):
    grads = rng.normal(size=(num_tasks, 6)) * rng.uniform(0.1, 10.0, size=(num_tasks, 1))
    combined, _, info = _run(balancer, np.ones(num_tasks), grads)
    units = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    projections = units @ combined
    np.testing.assert_allclose(projections, projections[0], rtol=1e-3)
    assert float(np.sum(info["weights"])) == pytest.approx(1.0, abs=1e-5)
  # Two parallel gradients of one direction: every split is impartial; the weights stay finite.
  combined, _, info = _run(balancer, np.ones(2), np.stack([np.ones(6), 3 * np.ones(6)]))
  assert np.all(np.isfinite(combined)) and float(np.sum(info["weights"])) == pytest.approx(1.0, abs=1e-5)


def test_imtl_g_leaves_a_vanishing_task_gradient_out():
  """Left in, a zero gradient's equation puts all the weight on it and the shared update vanishes."""
  rng = np.random.default_rng(12)
  grads = rng.normal(size=(3, 6))
  grads[1] = 0.0
  combined, _, info = _run(balancing.get("imtl_g"), np.ones(3), grads)
  np.testing.assert_array_equal(info["balanced"], [True, False, True])
  assert float(info["weights"][1]) == pytest.approx(1 / 3)
  units = grads[[0, 2]] / np.linalg.norm(grads[[0, 2]], axis=1, keepdims=True)
  projections = units @ combined
  assert projections[0] == pytest.approx(projections[1], rel=1e-4) and projections[0] > 0
  # The balanced tasks alone give the same shared update.
  alone, _, _ = _run(balancing.get("imtl_g"), np.ones(2), grads[[0, 2]])
  np.testing.assert_allclose(combined, alone, rtol=1e-4, atol=1e-6)


def test_dwa_weights_follow_the_last_two_periods_loss_ratios():
  balancer = balancing.get("dwa", temperature=2.0, period=2)
  state = balancer.init(2)
  grads = np.eye(2, 6)
  seen = []
  for losses in ([1.0, 1.0], [3.0, 1.0], [1.0, 1.0], [1.0, 0.5], [9.0, 9.0]):
    _, state, info = _run(balancer, losses, grads, state)
    seen.append(np.asarray(info["weights"]))
  for weights in seen[:4]:  # fewer than two finished periods
    np.testing.assert_allclose(weights, [1.0, 1.0])
  ratios = np.array([1.0 / 2.0, 0.75 / 1.0])  # period means (2, 1) then (1, 0.75)
  expected = 2 * np.exp(ratios / 2) / np.sum(np.exp(ratios / 2))
  np.testing.assert_allclose(seen[4], expected, rtol=1e-6)


def _toy_noisy_regression(balancer, noise_scales, steps, batch=256, learning_rate=0.05):
  """Shared 3-vector theta; task i regresses targets mu + noise_scales[i] * eps (MSE), so its loss
  converges to noise_scales[i]^2."""
  noise_scales = jnp.asarray(noise_scales, jnp.float32)
  mu = jnp.array([1.0, -2.0, 0.5])

  def task_losses(theta, targets):  # targets [tasks, batch, 3]
    return jnp.mean(jnp.sum((theta - targets) ** 2, axis=-1), axis=-1) / 3

  def step(carry, step_key):
    theta, state = carry
    targets = mu + noise_scales[:, None, None] * jax.random.normal(step_key, (len(noise_scales), batch, 3))
    losses = task_losses(theta, targets)
    grads = jax.jacrev(task_losses)(theta, targets)
    combined, state, info = balancer.update(losses, grads, state)
    return (theta - learning_rate * combined, state), info["weights"]

  keys = jax.random.split(jax.random.key(0), steps)
  (_, state), weights = jax.jit(lambda k: jax.lax.scan(step, (jnp.zeros(3), balancer.init(len(noise_scales))), k))(keys)
  return state, np.asarray(weights)


def test_uncertainty_weights_converge_to_inverse_loss_scales():
  noise_scales = np.array([0.5, 2.0])
  _, weights = _toy_noisy_regression(balancing.get("uncertainty", learning_rate=0.02), noise_scales, steps=600)
  np.testing.assert_allclose(weights[0], [1.0, 1.0])
  final = weights[-100:].mean(0)
  np.testing.assert_allclose(final * noise_scales ** 2, [1.0, 1.0], rtol=0.15)


@pytest.mark.parametrize("alpha, losses, target_ratio", [
    (0.0, [1.0, 0.5], 1.0),    # alpha 0: equal weighted gradient norms
    (1.0, [1.0, 0.5], 2.0),    # task 0 trains half as fast: twice the weighted norm
    (1.0, [0.25, 1.0], 0.25),
])
def test_gradnorm_drives_weighted_gradient_norms_to_the_target(alpha, losses, target_ratio):
  """Fixed gradients of norms 1 and 10 and initial losses (1, 1); then the losses stay at ``losses``,
  so ``r = L / mean(L)`` and the target ratio of weighted norms is ``(r_0 / r_1)^alpha``. (For
  alpha in {0, 1} the targets average to mean(G), so the target is reachable exactly.)"""
  grads = _grads_tree(np.eye(2, 6) * np.array([[1.0], [10.0]]))
  steps = 1000
  # A decaying step lets the weights settle on the target instead of circling it.
  balancer = balancing.get("gradnorm", alpha=alpha, optimizer=optax.adam(optax.cosine_decay_schedule(0.02, steps)))

  def run():
    _, state, first = balancer.update(jnp.array([1.0, 1.0]), grads, balancer.init(2))

    def step(state, _):
      _, state, info = balancer.update(jnp.asarray(losses), grads, state)
      norms = info["weighted_grad_norms"]
      return state, norms[0] / norms[1]

    state, ratios = jax.lax.scan(step, state, None, length=steps)
    return first["weighted_grad_norms"], ratios, state.weights

  first_norms, ratios, weights = jax.jit(run)()
  np.testing.assert_allclose(first_norms, [1.0, 10.0], rtol=1e-6)  # equal weights at the start
  assert float(ratios[-1]) == pytest.approx(target_ratio, rel=0.02)
  assert float(jnp.sum(weights)) == pytest.approx(2.0, rel=1e-5)


@pytest.mark.parametrize("name", ["uncertainty", "gradnorm", "pcgrad", "cagrad"])
def test_update_vmaps_over_stacked_networks(name):
  """The trainer runs cohorts of networks stacked on a leading axis: a vmapped update must equal
  the updates run one network at a time."""
  balancer = balancing.get(name)
  # vmapped and alone are different XLA programs, equal only up to float32 rounding, which CAGrad's linear
  # solves and bisection amplify by the problem's conditioning. Mixed-up networks are O(1) off.
  tolerance = {"rtol": 1e-3, "atol": 1e-5} if name == "cagrad" else {"rtol": 1e-4, "atol": 1e-6}
  rng = np.random.default_rng(9)
  grads = rng.normal(size=(2, 3, 6))        # [networks, tasks, 6]
  losses = rng.uniform(0.5, 2.0, size=(2, 3))
  states = jax.vmap(lambda _: balancer.init(3))(jnp.arange(2))
  stacked = jax.jit(jax.vmap(balancer.update))(jnp.asarray(losses, jnp.float32),
                                               jax.vmap(_grads_tree)(jnp.asarray(grads)), states)
  for network in range(2):
    alone, _, info = _run(balancer, losses[network], grads[network])
    np.testing.assert_allclose(_flat(jax.tree_util.tree_map(lambda x: x[network], stacked[0])), alone, **tolerance)
    np.testing.assert_allclose(stacked[2]["weights"][network], info["weights"], **tolerance)


def test_rlw_draws_softmax_normal_weights_per_step_from_its_seed():
  balancer = balancing.get("rlw", seed=3)
  state, seen = None, []
  for _ in range(200):
    _, state, info = _run(balancer, np.ones(3), np.eye(3, 6), state)
    seen.append(np.asarray(info["weights"]))
  seen = np.array(seen)
  key = jax.random.key(3)
  for weights in seen[:3]:
    key, draw = jax.random.split(key)
    np.testing.assert_allclose(weights, jax.nn.softmax(jax.random.normal(draw, (3,))), rtol=1e-6)
  np.testing.assert_allclose(seen.sum(1), 1.0, rtol=1e-6)
  # Exchangeable draws: each task's mean weight is 1/3 (standard error ~0.013 over 200 steps).
  np.testing.assert_allclose(seen.mean(0), 1 / 3, atol=0.05)


def test_imtl_l_scales_every_loss_to_one():
  """Fixed losses (0.5, 4): the scales exp(s_i) converge to 1 / L_i."""
  balancer = balancing.get("imtl_l", learning_rate=0.05)
  losses = jnp.array([0.5, 4.0])
  grads = _grads_tree(np.eye(2, 6))

  def step(state, _):
    _, state, info = balancer.update(losses, grads, state)
    return state, info["weights"]

  _, weights = jax.jit(lambda: jax.lax.scan(step, balancer.init(2), None, length=800))()
  np.testing.assert_allclose(weights[0], [1.0, 1.0])
  np.testing.assert_allclose(weights[-1] * np.asarray(losses), [1.0, 1.0], rtol=1e-2)


def test_imtl_hybrid_is_imtl_g_on_the_scaled_gradients():
  rng = np.random.default_rng(13)
  grads = rng.normal(size=(3, 6)) * np.array([[0.2], [1.0], [5.0]])
  balancer = balancing.get("imtl", learning_rate=0.1)
  state = None
  for _ in range(5):
    combined, state, info = _run(balancer, [0.5, 1.0, 2.0], grads, state)
  scales = np.asarray(info["loss_scales"])
  assert not np.allclose(scales, 1.0)  # the scales moved, so the test tells them from IMTL-G alone
  # IMTL-G's conditions on the scaled gradients: equal projections on every unit gradient (scaling does
  # not turn them) and alpha = weights / scales summing to 1.
  units = grads / np.linalg.norm(grads, axis=1, keepdims=True)
  projections = units @ combined
  np.testing.assert_allclose(projections, projections[0], rtol=1e-4)
  assert float(np.sum(np.asarray(info["weights"]) / scales)) == pytest.approx(1.0, abs=1e-5)


def test_famo_weights_and_its_logit_step_by_hand():
  balancer = balancing.get("famo", learning_rate=0.025, weight_decay=0.0)
  grads = np.eye(2, 6)
  # First update: uniform z, so w_i = (1 / L_i) / sum_j (1 / L_j).
  _, state, info = _run(balancer, [1.0, 4.0], grads)
  np.testing.assert_allclose(info["weights"], [0.8, 0.2], rtol=1e-6)
  # Then task 0's loss halves, task 1's stays: delta = (log 2, 0), J^T delta = (log 2 / 4, -log 2 / 4), and
  # Adam's first step moves each logit by -0.025 times its gradient's sign: the slower task gains weight.
  _, state, info = _run(balancer, [0.5, 4.0], grads, state)
  logits = np.array([-0.025, 0.025])
  np.testing.assert_allclose(info["task_logits"], logits, rtol=1e-5)
  z = np.exp(logits) / np.exp(logits).sum()
  expected = (z / [0.5, 4.0]) / np.sum(z / [0.5, 4.0])
  np.testing.assert_allclose(info["weights"], expected, rtol=1e-5)


def test_nash_mtl_solves_the_bargaining_condition():
  # Orthogonal gradients of norms n_i: G' = diag(n^2) / ||n^2||, so alpha_i = sqrt(||n^2||) / n_i.
  norms = np.array([0.5, 1.0, 4.0])
  _, _, info = _run(balancing.get("nash_mtl"), np.ones(3), np.eye(3, 6) * norms[:, None])
  np.testing.assert_allclose(info["alpha"], np.sqrt(np.linalg.norm(norms ** 2)) / norms, rtol=1e-5)
  # The weights are alpha at equal weighting's scale: proportional, summing to the number of tasks.
  np.testing.assert_allclose(info["weights"], 3 * (1 / norms) / np.sum(1 / norms), rtol=1e-5)
  rng = np.random.default_rng(14)
  for num_tasks in (2, 3, 4):
    grads = rng.normal(size=(num_tasks, 6)) + 1.5 * rng.normal(size=6)  # a direction that helps every task
    grads *= rng.uniform(0.3, 3.0, size=(num_tasks, 1))
    combined, _, info = _run(balancing.get("nash_mtl"), np.ones(num_tasks), grads)
    alpha = np.asarray(info["alpha"], np.float64)
    gram = grads @ grads.T
    normalised = gram / np.linalg.norm(gram)
    assert np.all(alpha > 0)
    # Newton converges quadratically; float32 leaves the condition met to ~1e-6 relative.
    np.testing.assert_allclose(normalised @ alpha, 1 / alpha, rtol=1e-4)
    # Every task's share of the update is the same.
    shares = alpha * (grads @ np.asarray(combined, np.float64))
    np.testing.assert_allclose(shares, np.full(num_tasks, shares.mean()), rtol=1e-3)


def test_nash_mtl_weights_stay_bounded_when_the_gradients_nearly_cancel():
  # Two gradients 0.01 from opposite: alpha is about 200 times equal weighting's, and it multiplied the
  # task-specific gradients (a network diverged within 25 steps of SGD at the paper's learning rate).
  grads = np.array([[1.0, 0.0, 0.0, 0.0], [-1.0, 0.01, 0.0, 0.0]])
  _, _, info = _run(balancing.get("nash_mtl"), np.ones(2), grads)
  assert np.min(info["alpha"]) > 100
  np.testing.assert_allclose(np.sum(info["weights"]), 2.0, rtol=1e-6)
  np.testing.assert_allclose(info["weights"], [1.0, 1.0], rtol=1e-3)  # symmetric: equal shares


def test_aligned_mtl_equalises_the_principal_components():
  # Orthogonal gradients: each is rescaled to the smallest norm.
  norms = np.array([0.5, 2.0, 4.0])
  _, _, info = _run(balancing.get("aligned_mtl"), np.ones(3), np.eye(3, 6) * norms[:, None])
  np.testing.assert_allclose(info["weights"], 0.5 / norms, rtol=1e-5)
  # Two equal gradients span one direction (the zero eigenvalue is dropped): B = v v^T, w = (1, 1).
  _, _, info = _run(balancing.get("aligned_mtl"), np.ones(2), np.stack([np.arange(6.0), np.arange(6.0)]))
  np.testing.assert_allclose(info["weights"], [1.0, 1.0], rtol=1e-4)
  # General: w = B 1 with B = sqrt(lambda_min) V diag(lambda)^(-1/2) V^T, the aligned gradients B g
  # orthogonal with equal norms.
  grads = np.random.default_rng(15).normal(size=(3, 6))
  _, _, info = _run(balancing.get("aligned_mtl"), np.ones(3), grads)
  eigenvalues, vectors = np.linalg.eigh(grads @ grads.T)
  whitening = np.sqrt(eigenvalues.min()) * (vectors / np.sqrt(eigenvalues)) @ vectors.T
  np.testing.assert_allclose(whitening @ (grads @ grads.T) @ whitening, eigenvalues.min() * np.eye(3), atol=1e-9)
  np.testing.assert_allclose(info["weights"], whitening.sum(0), rtol=1e-4)


def test_gradvac_starts_as_pcgrad_then_reaches_its_targets_exactly():
  g1, g2 = np.array([1.0, 0.2, 0, 0, 0, 0]), np.array([-0.6, 1.0, 0, 0, 0, 0])
  grads = np.stack([g1, g2])
  cosine = g1 @ g2 / np.linalg.norm(g1) / np.linalg.norm(g2)
  balancer = balancing.get("gradvac", beta=0.5)
  # Targets 0: the step projects out the conflict, as PCGrad does.
  combined, state, _ = _run(balancer, np.ones(2), grads)
  expected = g1 - (g1 @ g2) / (g2 @ g2) * g2 + g2 - (g1 @ g2) / (g1 @ g1) * g1
  np.testing.assert_allclose(combined, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.targets, [[0.0, 0.5 * cosine], [0.5 * cosine, 0.0]], rtol=1e-5)
  # Targets 0.5 cos (above cos): each vaccinated gradient's cosine with the other is now exactly the target.
  _, _, info = _run(balancer, np.ones(2), grads, state)
  vaccinated = np.asarray(info["vaccinated_coefficients"]) @ grads
  for i, j in ((0, 1), (1, 0)):
    achieved = vaccinated[i] @ grads[j] / np.linalg.norm(vaccinated[i]) / np.linalg.norm(grads[j])
    assert achieved == pytest.approx(0.5 * cosine, rel=1e-4)


def test_gradvac_targets_average_the_task_gradients_cosines_whether_or_not_a_step_is_taken():
  """Three tasks, targets above some cosines and below others: every off-diagonal target moves
  towards the cosine of the task gradients as computed (not of the vaccinated ones), the diagonal stays."""
  rng = np.random.default_rng(23)
  grads = rng.normal(size=(3, 8))
  beta = 0.2
  balancer = balancing.get("gradvac", beta=beta)
  state = balancer.init(3)
  targets = np.array([[0.0, 0.9, -0.9], [0.9, 0.0, 0.5], [-0.9, 0.5, 0.0]])
  state = state._replace(targets=jnp.asarray(targets, jnp.float32))
  _, new_state, info = _run(balancer, np.ones(3), grads, state)
  unit = grads / np.linalg.norm(grads, axis=1, keepdims=True)
  expected = (1 - beta) * targets + beta * (unit @ unit.T)
  np.fill_diagonal(expected, 0.0)
  np.testing.assert_allclose(new_state.targets, expected, atol=1e-5)
  # Steps were taken (towards the 0.9 targets), so the vaccinated cosines differ from the raw ones.
  assert not np.allclose(np.asarray(info["vaccinated_coefficients"]), np.eye(3), atol=1e-3)


def test_reseeded_gives_each_network_key_its_own_random_choices():
  balancer = balancing.get("rlw")
  state = balancer.init(4)
  first, second = (balancing.reseeded(state, jax.random.PRNGKey(k)) for k in (1, 2))
  weights = [np.asarray(balancer.update(jnp.ones(4), {"w": jnp.ones((4, 3))}, s)[2]["weights"]) for s in (first, second)]
  assert not np.allclose(weights[0], weights[1])
  again = balancing.reseeded(state, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(jax.random.key_data(again.key), jax.random.key_data(first.key))
  # Leaves that are not keys are left as they are.
  gradvac_state = balancing.get("gradvac").init(3)
  np.testing.assert_array_equal(balancing.reseeded(gradvac_state, jax.random.PRNGKey(1)).targets, gradvac_state.targets)


def test_graddrop_keeps_each_sign_with_its_purity():
  """Per element, task gradients (+1, -3): purity P = (1 + (-2) / 4) / 2 = 1/4, so the sum is +1 with
  probability 1/4 and -3 otherwise; agreeing signs are always kept; leak 1 is the plain sum."""
  size = 20000
  grads = {"w": jnp.stack([jnp.ones(size), -3.0 * jnp.ones(size)]), "agree": jnp.array([[1.0, -2.0], [3.0, -1.0]])}
  combined, _, info = jax.jit(balancing.get("graddrop", seed=1).update)(jnp.ones(2), grads, balancing.get("graddrop").init(2))
  values = np.asarray(combined["w"])
  assert set(np.unique(values)) == {1.0, -3.0}
  # Binomial standard error of the fraction: 0.003.
  assert np.mean(values == 1.0) == pytest.approx(0.25, abs=0.015)
  np.testing.assert_array_equal(combined["agree"], [4.0, -3.0])
  np.testing.assert_array_equal(info["weights"], [1.0, 1.0])
  leaky, _, _ = balancing.get("graddrop", leak=1.0).update(jnp.ones(2), grads, balancing.get("graddrop").init(2))
  np.testing.assert_array_equal(leaky["w"], np.full(size, -2.0))


def test_db_mtl_rescales_moving_averages_of_log_loss_gradients():
  beta = 0.9
  balancer = balancing.get("db_mtl", beta=beta)
  rng = np.random.default_rng(16)
  first, second = rng.normal(size=(2, 3, 6))
  losses = np.array([0.5, 1.0, 2.0])
  averages = np.zeros((3, 6))
  state = None
  for grads in (first, second):
    combined, state, info = _run(balancer, losses, grads, state)
    log_grads = grads / losses[:, None]
    averages = log_grads + beta * (averages - log_grads)
    norms = np.linalg.norm(averages, axis=1)
    np.testing.assert_allclose(combined, (norms.max() / norms) @ averages, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(info["weights"], 1 / losses, rtol=1e-6)
  with pytest.raises(ValueError, match="init\\(num_tasks, shared_params\\)"):
    balancer.init(3)
