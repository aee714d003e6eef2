"""The adaptive training loop on tables alone (selection/adaptive.py, replayed with TableOracle)."""

import dataclasses

import numpy as np
import pytest

from tg_jax.selection import adaptive, selector, synthetic
from tg_jax.selection.tables import ResultsTable, TableError


def _study(seed=0, num_tasks=5):
  val = synthetic.random_table(num_tasks, seed=seed)
  # Early losses: each task's converged loss 30% higher, plus noise.
  rng = np.random.default_rng(seed + 100)
  esa = dataclasses.replace(val, losses=val.losses * 1.3 * rng.uniform(0.97, 1.03, val.losses.shape))
  return val, esa


class CountingOracle(adaptive.TableOracle):

  def __init__(self, val, esa):
    super().__init__(val, esa)
    object.__setattr__(self, "calls", {"early": [], "converged": []})

  def early(self, keys):
    self.calls["early"].extend(keys)
    return super().early(keys)

  def converged(self, keys):
    self.calls["converged"].extend(keys)
    return super().converged(keys)


def _keys(table):
  return [table.network_key(r) for r in range(table.num_networks)]


def test_the_loop_pays_for_what_it_trains_within_its_budget():
  val, esa = _study()
  oracle = CountingOracle(val, esa)
  settings = adaptive.Settings(trainings=10.0, early_fraction=0.25, screen=4, promote=2)
  result = adaptive.run(oracle, _keys(val), [1.0, 2.0, 3.0], settings)
  screened, promoted = oracle.calls["early"], oracle.calls["converged"]
  assert len(set(screened)) == len(screened) and len(set(promoted)) == len(promoted)
  assert result.trainings == pytest.approx(len(promoted) + 0.25 * len(screened))
  assert result.trainings <= settings.trainings
  assert result.snt_trainings == pytest.approx(sum(k[1] for k in promoted) + 0.25 * sum(k[1] for k in screened))
  assert sorted(_keys(result.converged), key=str) == sorted(promoted, key=str)
  # It starts from every full-size single and then trains what the selection chose.
  assert all(len(k[0]) == 1 and k[1] == 1.0 for k in promoted[:5]) and len(promoted) > 5
  assert [len(r.promoted) for r in result.rounds] and all(len(r.screened) <= 4 and len(r.promoted) <= 2
                                                          for r in result.rounds)


def test_a_generous_budget_ends_stable_with_every_choice_trained():
  val, esa = _study(seed=1)
  result = adaptive.run(adaptive.TableOracle(val, esa), _keys(val), [1.0, 2.0, 3.0],
                        adaptive.Settings(trainings=float(val.num_networks), screen=6, promote=3))
  assert result.stable and result.trainings < val.num_networks
  trained = set(_keys(result.converged))
  assert not adaptive._choose(result.converged, result.early, _keys(val), [1.0, 2.0, 3.0], None)
  assert trained <= set(_keys(val)) and set(_keys(result.early)) >= trained


def test_early_losses_are_scaled_by_the_converged_networks_ratio():
  names = ("a", "b")
  converged = ResultsTable.from_rows(names, [(("a",), 1.0, {"a": 1.0}), (("b",), 1.0, {"b": 2.0})])
  early = ResultsTable.from_rows(names, [(("a",), 1.0, {"a": 2.0}), (("b",), 1.0, {"b": 2.5}),
                                         (("a", "b"), 1.0, {"a": 1.0, "b": 5.0})])
  np.testing.assert_allclose(adaptive.early_to_converged(converged, early), [0.5, 0.8])
  estimated = adaptive._estimated(converged, early)
  assert estimated.network_tasks == (("a", "b"),)
  np.testing.assert_allclose(estimated.losses, [[0.5, 4.0]])


def test_bad_settings_and_candidates_are_refused():
  val, esa = _study()
  with pytest.raises(ValueError, match="1 <= promote <= screen"):
    adaptive.Settings(trainings=5, screen=2, promote=3)
  with pytest.raises(ValueError, match="more than its budget of 3 trainings"):
    adaptive.run(adaptive.TableOracle(val, esa), _keys(val), [2.0], adaptive.Settings(trainings=3))
  pairs_only = [k for k in _keys(val) if len(k[0]) == 2]
  with pytest.raises(TableError, match="single-task network on every task"):
    adaptive.run(adaptive.TableOracle(val, esa), pairs_only, [2.0], adaptive.Settings(trainings=10))
  with pytest.raises(TableError, match="lacks networks the adaptive loop trains"):
    adaptive.TableOracle(adaptive.narrowed(val, [0]), esa).converged(_keys(val)[1:2])
