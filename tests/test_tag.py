"""TAG: lookahead affinities against a hand computation, and groupings from affinities."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tg_jax.affinity.tag import AffinitySum, lookahead_affinity
from tg_jax.selection import tag
from tg_jax.selection.tables import TableError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _linear_losses(shared, heads, batch):
  """Per-task MSE of a two-layer linear model: prediction_t = (x @ shared) @ heads[:, t]."""
  x, y = batch                                     # x [n, d], y [n, tasks]
  return jnp.mean((x @ shared @ heads - y) ** 2, axis=0)


def _linear_problem(num_tasks=3, hidden=2, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(32, 5))
  y = x @ rng.normal(size=(5, num_tasks)) + 0.1 * rng.normal(size=(32, num_tasks))
  return rng.normal(size=(5, hidden)), rng.normal(size=(hidden, num_tasks)), x, y


def test_lookahead_affinity_matches_an_explicit_sgd_step_by_hand():
  shared, heads, x, y = _linear_problem()
  learning_rate = 0.01
  affinity = np.asarray(lookahead_affinity(_linear_losses, jnp.asarray(shared, jnp.float32),
                                           jnp.asarray(heads, jnp.float32),
                                           (jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)),
                                           learning_rate))
  # numpy float64: the gradient of mean_n (x W h_i - y_i)^2 with respect to W is
  # (2 / n) x^T (x W h_i - y_i) h_i^T; step W on task i alone, heads fixed, same batch.
  def losses(w):
    return np.mean((x @ w @ heads - y) ** 2, axis=0)

  before = losses(shared)
  expected = np.zeros((3, 3))
  for i in range(3):
    residual = x @ shared @ heads[:, i] - y[:, i]
    gradient = 2.0 / len(x) * np.outer(x.T @ residual, heads[:, i])
    expected[i] = 1.0 - losses(shared - learning_rate * gradient) / before
  # Affinities near 0 are 1 - L'/L of float32 losses, so their absolute error is the losses' relative rounding:
  # up to ~2 x 10 eps = 2.4e-6 (each loss a mean of 32 terms after two matmuls; 2.2e-7 seen here and in numpy
  # float32 summed in two orders). The smallest affinity is 5.7e-5: 10% off is still caught.
  np.testing.assert_allclose(affinity, expected, rtol=2e-3, atol=5e-6)
  assert np.all(np.diag(affinity) > 0)  # a small step on a task lowers its own loss
  scaled = lookahead_affinity(_linear_losses, jnp.asarray(shared, jnp.float32), jnp.asarray(heads, jnp.float32),
                              (jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)), learning_rate,
                              scale_by_learning_rate=True)
  np.testing.assert_allclose(scaled, affinity / learning_rate, rtol=1e-6)


def test_affinity_sum_averages_and_refuses_to_average_nothing():
  total = AffinitySum.zeros(2)
  with pytest.raises(ValueError, match="call add"):
    total.mean()
  total = total.add(jnp.array([[1.0, 2.0], [3.0, 4.0]])).add(jnp.array([[3.0, 0.0], [1.0, 0.0]]))
  np.testing.assert_allclose(total.mean(), [[2.0, 1.0], [2.0, 2.0]])


def test_group_scores_follow_tags_formula_and_orientation():
  # affinity[u, t] = Z(u -> t). Group (0, 1, 2): task 0 scores (Z(1->0) + Z(2->0)) / 2.
  affinity = np.array([[9.0, 0.1, 0.2],
                       [0.3, 9.0, 0.4],
                       [0.5, 0.6, 9.0]])
  names = ("a", "b", "c")
  candidates = tag.table(names, affinity)
  row = candidates.network_tasks.index(("a", "b", "c"))
  np.testing.assert_allclose(candidates.losses[row], [-(0.3 + 0.5) / 2, -(0.1 + 0.6) / 2, -(0.2 + 0.4) / 2])
  pair = candidates.network_tasks.index(("a", "c"))
  np.testing.assert_allclose(candidates.losses[pair], [-0.5, np.inf, -0.2])
  assert candidates.num_networks == 2 ** 3 - 1
  assert tag.table(names, affinity, include_singletons=False).num_networks == 2 ** 3 - 1 - 3
  assert tag.table(names, affinity, max_group_size=2).num_networks == 3 + 3
  with pytest.raises(TableError, match=r"\[tasks, tasks\] = \[3, 3\]"):
    tag.table(names, affinity[:2])


def _planted_affinity():
  """Two blocks that help each other inside ({0, 1, 2} and {3, 4}) and hurt across; task 5 is hurt
  by everyone and helps no one."""
  affinity = np.full((6, 6), -0.2)
  affinity[np.ix_([0, 1, 2], [0, 1, 2])] = 0.5
  affinity[np.ix_([3, 4], [3, 4])] = 0.4
  affinity[:, 5] = -0.3
  return affinity


def test_selector_groups_tasks_with_strong_mutual_affinity():
  names = ("t0", "t1", "t2", "t3", "t4", "t5")
  candidates, solutions = tag.select_many(names, _planted_affinity(), [1, 2, 3, 4])
  grouped = {s.budget: set(tag.groups(candidates, s)) for s in solutions}
  assert grouped[1] == {names}
  # Two networks: the blocks; task 5 joins the smaller one, where it costs less
  # (scores 0.1, 0.1, -0.3 there against 3 x 0.27 and -0.3 in the larger one).
  assert grouped[2] == {("t0", "t1", "t2"), ("t3", "t4", "t5")}
  assert solutions[1].objective == pytest.approx(-(3 * 0.5 + 0.1 + 0.1 - 0.3))
  # Three: task 5 alone (score 0), nothing better to spend a fourth network on.
  assert grouped[3] == grouped[4] == {("t0", "t1", "t2"), ("t3", "t4"), ("t5",)}
  assert -solutions[2].objective / len(names) == pytest.approx((3 * 0.5 + 2 * 0.4 + 0.0) / 6)
  # Without singletons (TAG's notebook) task 5 must share a network even with a budget to spare.
  candidates, (forced,) = tag.select_many(names, _planted_affinity(), [3], include_singletons=False)
  assert all(len(group) > 1 for group in tag.groups(candidates, forced))


def test_tag_end_to_end_on_a_bottlenecked_linear_model():
  """Four regression tasks through a one-unit shared layer: tasks 0 and 1 want the direction a,
  tasks 2 and 3 the orthogonal direction b. Affinities averaged over training pair them up."""
  rng = np.random.default_rng(0)
  dim = 6
  a, b = np.eye(dim)[0], np.eye(dim)[1]
  directions = np.stack([a, a + 0.1 * np.eye(dim)[2], b, b + 0.1 * np.eye(dim)[3]], axis=1)  # [d, tasks]
  shared = jnp.asarray(0.1 * rng.normal(size=(dim, 1)), jnp.float32)
  heads = jnp.ones((1, 4), jnp.float32)
  learning_rate = 0.05
  total = AffinitySum.zeros(4)
  keys = jax.random.split(jax.random.key(0), 60)

  @jax.jit
  def train_step(shared, heads, batch):
    grads = jax.grad(lambda s, h: jnp.sum(_linear_losses(s, h, batch)), argnums=(0, 1))(shared, heads)
    return shared - learning_rate * grads[0], heads - learning_rate * grads[1]

  for step, key in enumerate(keys):
    x = jax.random.normal(key, (64, dim))
    batch = (x, x @ jnp.asarray(directions, jnp.float32))
    if step % 3 == 0:
      total = total.add(lookahead_affinity(_linear_losses, shared, heads, batch, learning_rate))
    shared, heads = train_step(shared, heads, batch)
  affinity = np.asarray(total.mean())
  assert affinity[0, 1] > affinity[0, 2] and affinity[2, 3] > affinity[2, 0]
  candidates, (solution,) = tag.select_many(("a0", "a1", "b0", "b1"), affinity, [2])
  assert set(tag.groups(candidates, solution)) == {("a0", "a1"), ("b0", "b1")}


def test_tag_selection_side_does_not_import_jax():
  code = ("import sys, tg_jax.selection.tag; "
          "print([m for m in ('jax', 'tensorflow', 'flax') if m in sys.modules])")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
  assert result.stdout.strip() == "[]"
