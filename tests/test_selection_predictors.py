"""Grouping predictors (tg_jax.selection.predictors): one interface, each predictor's answer and compute."""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tg_jax.selection import predictors, study, synthetic, tables
from tg_jax.selection import tag as tag_selection

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The surrogate's main effects carry a 1e-9 ridge penalty (for identifiability); with losses of order
# 1 its exactly determined fits agree with HOA to far better than this.
FIT_TOLERANCE = 1e-6


def _pairs_only(table: tables.ResultsTable) -> tables.ResultsTable:
  return table.subset([r for r, tasks in enumerate(table.network_tasks) if len(tasks) <= 2])


def _by_key(table: tables.ResultsTable) -> dict:
  return {table.network_key(r): table.losses[r] for r in range(table.num_networks)}


def _interaction_table(num_tasks: int = 5, seed: int = 0) -> tables.ResultsTable:
  """Every group, with losses exactly in the surrogate's model class: main effects plus one strong
  pairwise term (tasks 1 and 2 together hurt task 0 beyond what the pairs show)."""
  rng = np.random.default_rng(seed)
  names = tuple(f"t{i}" for i in range(num_tasks))
  base = rng.uniform(0.5, 1.0, num_tasks)
  effect = rng.normal(0, 0.1, (num_tasks, num_tasks))
  rows = []
  for order in range(1, num_tasks + 1):
    for group in itertools.combinations(range(num_tasks), order):
      losses = {}
      for t in group:
        others = [u for u in group if u != t]
        loss = base[t] * (1 + (np.mean(effect[t, others]) if others else 0.0))
        pairs = list(itertools.combinations(others, 2))
        if t == 0 and 1 in others and 2 in others:
          loss += 0.3 / len(pairs)
        losses[names[t]] = loss
      rows.append((tuple(names[t] for t in group), 1.0, losses))
  return tables.ResultsTable.from_rows(names, rows)


def test_surrogate_on_singles_and_pairs_predicts_what_hoa_does():
  trained = _pairs_only(synthetic.random_table(5, seed=1))
  surrogate = predictors.predict("surrogate", predictors.Measured(trained))
  expected = _by_key(predictors.predict("hoa", predictors.Measured(trained)).table)
  assert surrogate.num_predicted == 16  # the groups of 3+ of five tasks
  for row in np.flatnonzero(surrogate.predicted):
    np.testing.assert_allclose(surrogate.table.losses[row], expected[surrogate.table.network_key(row)],
                               rtol=FIT_TOLERANCE)
  assert surrogate.error is None  # nothing held out, no group of 3+ to leave out


def test_surrogate_learns_a_pairwise_term_hoa_cannot_express():
  table = _interaction_table()
  surrogate = predictors.predict("surrogate", predictors.Measured(table), sample=0.75)
  approximation = predictors.predict("hoa", predictors.Measured(table))
  assert surrogate.error.kind == "held-out" and approximation.error.kind == "held-out"
  assert surrogate.num_predicted == 4  # 12 of the 16 groups of 3+ trained
  assert surrogate.error.max_ratio_error < 0.2 * approximation.error.max_ratio_error


def test_leave_one_out_residuals_match_refitting_without_each_row():
  rng = np.random.default_rng(3)
  features = np.concatenate([np.ones((12, 1)), rng.normal(size=(12, 4))], axis=1)
  targets = rng.normal(size=12)
  penalties = np.array([0.0, 0.1, 0.1, 0.5, 0.5])
  _, loo = predictors._ridge(features, targets, penalties)
  for i in range(12):
    keep = np.arange(12) != i
    coefficients, _ = predictors._ridge(features[keep], targets[keep], penalties)
    assert loo[i] == pytest.approx(targets[i] - features[i] @ coefficients, rel=1e-6, abs=1e-9)


def test_surrogate_fitted_on_everything_reports_its_leave_one_out_error():
  prediction = predictors.predict("surrogate", predictors.Measured(_interaction_table()))
  assert prediction.num_predicted == 0 and prediction.error.kind == "leave-one-out"
  assert prediction.compute.trainings == 31


def test_surrogate_compute_counts_what_it_was_fitted_on():
  table = synthetic.random_table(5, seed=2)  # 5 half-size singles + 31 groups
  prediction = predictors.predict("surrogate", predictors.Measured(table), sample=0.5)
  assert prediction.compute.trainings == 5 + 5 + 10 + 8  # half singles, singles, pairs, 8 of 16 larger
  assert prediction.compute.snt_trainings == 2.5 + 5 + 10 + 8
  assert prediction.num_predicted == 8
  again = predictors.predict("surrogate", predictors.Measured(table), sample=0.5)
  np.testing.assert_array_equal(prediction.table.losses, again.table.losses)  # seeded draw


def _affinities(task_names, cosine=True):
  lookahead = np.array([[0, 1.0, -1.0], [1.0, 0, -1.0], [-1.0, -1.0, 0]])
  return predictors.Affinities(tuple(task_names), lookahead, -lookahead if cosine else None, training_steps=100,
                               lookahead_network_steps=50, cosine_network_steps=20)


def test_tag_predictors_score_groups_from_their_matrix_in_the_tables_task_order():
  trained = synthetic.random_table(3, seed=0)
  reversed_names = trained.task_names[::-1]
  affinities = _affinities(reversed_names)
  prediction = predictors.predict("tag", predictors.Measured(trained, affinities))
  order = [list(reversed_names).index(t) for t in trained.task_names]
  expected = tag_selection.table(trained.task_names, affinities.lookahead[np.ix_(order, order)])
  np.testing.assert_array_equal(prediction.table.losses, expected.losses)
  assert prediction.compute.trainings == 1.5 and prediction.error is None
  cosine = predictors.predict("tag_cosine", predictors.Measured(trained, affinities))
  np.testing.assert_array_equal(cosine.table.losses, tag_selection.table(
      trained.task_names, affinities.cosine[np.ix_(order, order)]).losses)
  assert cosine.compute.trainings == 1.2


def test_predictors_say_what_they_are_missing():
  trained = synthetic.random_table(3, seed=0)
  with pytest.raises(tables.TableError, match="tag.json"):
    predictors.predict("tag", predictors.Measured(trained))
  with pytest.raises(tables.TableError, match="cosine"):
    predictors.predict("tag_cosine", predictors.Measured(trained, _affinities(trained.task_names, cosine=False)))
  with pytest.raises(tables.TableError, match="tables' tasks"):
    predictors.predict("tag", predictors.Measured(trained, _affinities(("x", "y", "z"))))
  with pytest.raises(ValueError, match="choose one of hoa, surrogate, tag, tag_cosine"):
    predictors.predict("mtg", predictors.Measured(trained))
  with pytest.raises(ValueError, match=r"in \[0, 1\]"):
    predictors.predict("surrogate", predictors.Measured(trained), sample=2.0)
  with pytest.raises(tables.TableError, match="task0, task2"):
    predictors.fit_surrogate(trained, [r for r, t in enumerate(trained.network_tasks) if t == ("task1",)])


@pytest.mark.parametrize("name", predictors.NAMES)
def test_every_predictor_runs_through_the_study_by_name(name):
  trained = synthetic.random_table(4, seed=5)
  result = study.run(trained, trained, predict=name, budgets=[1.0, 2.0], random_samples=5,
                     affinities=_affinities4(trained.task_names))
  assert result.predict == name and result.prediction_compute.trainings > 0
  assert all(s.test_loss is not None for s in result.solutions)  # every group is trained here
  value = json.loads(json.dumps(result.to_json()))
  assert value["prediction_compute"]["trainings"] == result.prediction_compute.trainings
  assert "prediction_error" in value


def _affinities4(task_names):
  rng = np.random.default_rng(0)
  matrix = rng.normal(size=(len(task_names), len(task_names)))
  return predictors.Affinities(tuple(task_names), matrix, (matrix + matrix.T) / 2, training_steps=10)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "tg_jax.select", *args], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=120)


def test_select_command_takes_every_predictor_by_name(tmp_path):
  table = synthetic.random_table(4, seed=6)
  tables.write_csv(table, str(tmp_path / "val.csv"))
  affinities = _affinities4(table.task_names)
  (tmp_path / "tag.json").write_text(json.dumps({"tasks": list(table.task_names),
                                                 "affinity": affinities.lookahead.tolist(),
                                                 "cosine": affinities.cosine.tolist(), "network_steps": 10}))
  run = _cli(f"--results={tmp_path / 'val.csv'}", "--predict=surrogate", "--surrogate_sample=0.5", "--budgets=1,2",
             "--random_samples=5")
  assert run.returncode == 0, run.stderr
  assert "the surrogate's predictions: trained" in run.stdout and "held-out error" in run.stdout
  run = _cli(f"--results={tmp_path / 'val.csv'}", "--predict=tag_cosine", f"--affinities={tmp_path / 'tag.json'}",
             "--budgets=1,2", "--random_samples=5")
  assert run.returncode == 0, run.stderr
  assert "TAG's gradient cosine similarities" in run.stdout
  run = _cli(f"--results={tmp_path / 'val.csv'}", f"--affinities={tmp_path / 'tag.json'}")
  assert run.returncode == 2 and "--predict=tag" in run.stderr
  run = _cli(f"--results={tmp_path / 'val.csv'}", "--predict=tag")
  assert run.returncode == 2 and "tag.json" in run.stderr and "Traceback" not in run.stderr
