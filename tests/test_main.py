"""The entry point's helpers, and merging an array job's shards into the tables one job would write."""

import json
import os

import numpy as np
import pytest

import train_fakes
from tg_jax import finish
from tg_jax import main
from tg_jax import merge
from tg_jax import workdir as workdir_lib
from tg_jax.reporting import analysis
from tg_jax.training import ensemble
from tg_jax.training import predictions
from tg_jax.training import trainer


def test_default_workdir_names_config_and_variant():
  assert main.default_workdir("experiments/pairs.py") == os.path.join("workdirs", "pairs")
  assert main.default_workdir("experiments/pairs.py:full") == os.path.join("workdirs", "pairs_full")


def _missing(workdir):
  study_tables = workdir_lib.load_study(workdir_lib.Workdir(workdir))
  return finish.missing_networks(study_tables, analysis.selections(study_tables))


def test_merged_shards_equal_one_unsharded_run(tmp_path):
  config = train_fakes.tiny_config()
  config.num_epochs = 2
  config.evaluation.ensemble = True
  trainer.train_and_evaluate(config, str(tmp_path / "whole"))
  sharded = workdir_lib.Workdir(str(tmp_path / "sharded"))
  for index in range(2):
    trainer.train_and_evaluate(config, sharded.shard(index, 2).path, shard_index=index, num_shards=2)
  merge.merge(sharded.path)
  whole = workdir_lib.Workdir(str(tmp_path / "whole"))
  for split in workdir_lib.SPLITS:
    with open(whole.table(split)) as a, open(sharded.table(split)) as b:
      assert a.readline() == b.readline(), split  # the header
    ours, theirs = sharded.read_table(split), whole.read_table(split)
    assert (ours.table.network_tasks, ours.seeds) == (theirs.table.network_tasks, theirs.seeds), split
    np.testing.assert_array_equal(ours.table.costs, theirs.table.costs)
    # A shard trains its networks in smaller cohorts, other XLA programs than the whole run's, equal only up to
    # float32 rounding carried through training (one run's losses move by 2e-6 from AVX-512 to AVX). Another
    # seed moves every loss by 3e-4 to 0.3.
    np.testing.assert_allclose(ours.samples, theirs.samples, rtol=1e-4, err_msg=split)
  assert sharded.read_run().schedule == whole.read_run().schedule

  # Pairs only: HOA chooses groups of 3 tasks that were never trained; the retraining phase trains
  # exactly those, and then every HOA solution is scored on test.
  assert _missing(sharded.path) == ["toy_depth+toy_normals+toy_segment"]
  printed = merge.run(sharded.path)
  assert "constant predictor" in printed
  assert [n.name for n in sharded.retrain.read_run().networks] == ["toy_depth+toy_normals+toy_segment"]
  assert _missing(sharded.path) == []
  report = open(sharded.report).read()
  assert "Improvement over the constant predictor" in report and "toy_depth+toy_segment" in report
  assert "Table 4" in report and os.path.exists(os.path.join(sharded.figures, "figure4_loss_vs_budget.png"))
  with open(sharded.selection) as f:
    selection = json.load(f)
  assert all(s["test_loss"] is not None and not s["untrained"] for s in selection["solutions"])
  # Ensembles: every budget whose chosen networks (all from the main run) share a task.
  with open(sharded.ensemble) as f:
    ensembles = json.load(f)
  shared = [s["budget"] for s in selection["solutions"] if len(s["networks"]) >= 2
            and not any(len(n["tasks"]) == 3 for n in s["networks"])
            and len({t for n in s["networks"] for t in n["tasks"]}) < sum(len(n["tasks"]) for n in s["networks"])]
  assert [e["budget"] for e in ensembles["budgets"] if e["tasks"]] == shared and ensembles["method"] == "hoa"
  # Figure 6: at budget 2.5 each method's serving networks, from the shards' and the retraining phase's
  # checkpoints, on the first test images.
  predicted = sharded.read_predictions()
  study_tables = workdir_lib.load_study(sharded)
  assert (predicted.budget, predicted.serving()) == analysis.serving_networks(study_tables, analysis.compare_methods(
      study_tables, random_samples=20))
  assert {"optimal", "esa", "hoa", "all_task", "independent"} <= set(predicted.methods)
  assert predicted.images.shape == (predictions.NUM_IMAGES, 16, 16, 3)
  assert "toy_depth+toy_normals+toy_segment" in predicted.networks  # the all-task baseline, retrained
  name = predicted.serving()["hoa"]["toy_segment"]
  source = sharded.path if name in {n.name for n in sharded.read_run().networks} else sharded.retrain.path
  model, variables = ensemble.best_variables(config, source, [name], (16, 16, 3))[name]
  images = next(iter(train_fakes.FAKE_DATA.load(config.data, config.tasks, "test").eval_batches(3)))["image"]
  expected = np.argmax(model.apply(variables, images, train=False)["toy_segment"], axis=-1)
  np.testing.assert_array_equal(
      predicted.outputs[config.tasks.index("toy_segment")][predicted.methods.index("hoa")], expected)
  assert "## Figure 6" in report and os.path.getsize(os.path.join(sharded.figures, "figure6_predictions.png")) > 5000


def test_a_run_with_two_seeds_reports_intervals_from_seeds_and_examples(tmp_path):
  config = train_fakes.tiny_config()
  config.num_epochs = 2
  config.networks.seeds = 2
  workdir = workdir_lib.Workdir(str(tmp_path / "seeds"))
  trainer.train_and_evaluate(config, workdir.path)
  study_tables = workdir_lib.load_study(workdir)
  assert study_tables.replicas is not None and study_tables.examples is not None
  assert study_tables.examples.test.shape[:2] == (study_tables.val.num_networks, 2)
  printed = finish.finish(config, workdir.path, random_samples=20)
  assert "95% intervals over 2 seeds" in printed
  with open(workdir.selection) as f:
    solutions = json.load(f)["solutions"]
  assert all(s["test_loss_interval"] is not None and 0 <= s["probability_optimal"] <= 1
             for s in solutions if s["test_loss"] is not None)
  report = open(workdir.report).read()
  assert "## What is robust" in report and "From 2 seeds per network" in report


def test_wider_all_task_networks_train_and_are_the_all_task_baselines_beyond_one_snt(tmp_path):
  config = train_fakes.tiny_config()
  config.num_epochs = 2
  config.networks.subsets = "all"
  everything = "+".join(config.tasks)
  config.networks.extra = (f"{everything}:mgda",)
  config.networks.all_task_sizes = (2,)
  workdir = workdir_lib.Workdir(str(tmp_path / "wider"))
  trainer.train_and_evaluate(config, workdir.path)
  finish.finish(config, workdir.path, random_samples=20)
  study_tables = workdir_lib.load_study(workdir)
  test = study_tables.test
  wider = [r for r in range(test.num_networks) if len(test.network_tasks[r]) == 3 and test.costs[r] > 1.5]
  assert len(wider) == 1 and abs(test.costs[wider[0]] - 2.0) < 0.2  # measured, near its nominal size
  assert {entry["size"] for entry in study_tables.methods.values()} == {1.0, 2.0}
  with open(workdir.study) as f:
    written = json.load(f)
  at_two = written["budgets"].index(2.0)
  assert written["methods"]["all_task"][at_two] == pytest.approx(test.losses[wider[0]].sum(), rel=1e-12)
  wider_mgda = study_tables.methods[f"{everything}@2:mgda"]["test"]
  assert written["methods"]["mgda (all tasks)"][at_two] == pytest.approx(sum(wider_mgda.values()), rel=1e-12)
  assert [entry["k"] for entry in written["figure2"]] == [2]  # the pairs against half-size singles
  assert "## Figure 2" in open(workdir.report).read()


def test_a_helper_task_is_trained_and_measured_but_never_served(tmp_path):
  config = train_fakes.tiny_config()
  config.num_epochs = 2
  config.selection.predict = "none"
  config.selection.helper_tasks = ("toy_segment",)
  config.networks.subsets = ""
  config.networks.half_size_singles = False
  config.networks.extra = ("toy_depth", "toy_normals", "toy_depth+toy_normals", "toy_depth@0.5", "toy_normals@0.5",
                           "toy_depth+toy_segment", "toy_normals+toy_segment")
  workdir = workdir_lib.Workdir(str(tmp_path / "helper"))
  trainer.train_and_evaluate(config, workdir.path)
  # The results files measure the helper like any task.
  written = workdir.read_table("test").table
  assert "toy_segment" in written.task_names
  helped = written.network_tasks.index(("toy_depth", "toy_segment"))
  assert np.isfinite(written.losses[helped, written.task_names.index("toy_segment")])
  finish.finish(config, workdir.path, random_samples=20)
  with open(workdir.selection) as f:
    selection = json.load(f)
  assert selection["tasks"] == ["toy_depth", "toy_normals"]
  assert all(set(s["assignment"]) == {"toy_depth", "toy_normals"} for s in selection["solutions"])
  study_tables = workdir_lib.load_study(workdir)
  assert study_tables.helper_tasks == ("toy_segment",)
  # Networks with the helper are candidates for the served task they have.
  assert study_tables.val.network_key(study_tables.val.helped_rows()[0]) == written.network_key(helped)
  report = open(workdir.report).read()
  assert "## Helper tasks" in report and "| toy_depth | " in report
  assert os.path.exists(os.path.join(workdir.figures, "helper_tasks.png"))
