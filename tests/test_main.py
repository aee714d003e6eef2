"""The entry point's helpers, and merging an array job's shards into the tables one job would write."""

import json
import os

import train_fakes
from tg_jax import main
from tg_jax import merge
from tg_jax.training import ensemble
from tg_jax.training import retrain
from tg_jax.training import summary
from tg_jax.training import trainer


def test_default_workdir_names_config_and_variant():
  assert main.default_workdir("experiments/pairs.py") == os.path.join("workdirs", "pairs")
  assert main.default_workdir("experiments/pairs.py:full") == os.path.join("workdirs", "pairs_full")


def test_merged_shards_equal_one_unsharded_run(tmp_path, monkeypatch):
  config = train_fakes.tiny_config()
  config.num_epochs = 2
  monkeypatch.setattr(trainer, "_load_datasets", train_fakes.datasets)
  trainer.train_and_evaluate(config, str(tmp_path / "whole"))
  for index in range(2):
    trainer.train_and_evaluate(config, main.shard_workdir(str(tmp_path / "sharded"), index, 2),
                               shard_index=index, num_shards=2)
  merge.merge(str(tmp_path / "sharded"))
  for file in ("val.csv", "test.csv", "esa.csv"):
    with open(tmp_path / "whole" / "results" / file) as a, open(tmp_path / "sharded" / "results" / file) as b:
      assert a.read() == b.read(), file

  printed = summary.write(str(tmp_path / "sharded"), "hoa")
  assert os.path.exists(tmp_path / "sharded" / summary.SELECTION_FILE)
  assert "constant predictor" in printed
  report = (tmp_path / "sharded" / "report.md").read_text()
  assert "Improvement over the constant predictor" in report and "toy_depth+toy_segment" in report
  assert "Table 4" in report and os.path.exists(tmp_path / "sharded" / "figures" / "figure4_loss_vs_budget.png")

  # Pairs only: HOA chooses groups of 3 tasks that were never trained; the retraining phase trains
  # exactly those, and then every HOA solution is scored on test.
  missing = retrain.missing_networks(str(tmp_path / "sharded"))
  assert missing == ["toy_depth+toy_normals+toy_segment"]
  assert retrain.run(config, str(tmp_path / "sharded"))["status"] == trainer.STATUS_COMPLETE
  with open(tmp_path / "sharded" / "retrain" / "results" / "networks.json") as f:
    assert [n["name"] for n in json.load(f)["networks"]] == missing
  assert retrain.missing_networks(str(tmp_path / "sharded")) == []
  config.evaluation.ensemble = True
  monkeypatch.setattr(ensemble, "_load_split", lambda config, split: train_fakes.datasets(config)[split])
  summary.write(str(tmp_path / "sharded"), "hoa", config)
  with open(tmp_path / "sharded" / summary.SELECTION_FILE) as f:
    selection = json.load(f)
  assert all(s["test_loss"] is not None and not s["untrained"] for s in selection["solutions"])
  # Ensembles: every budget whose chosen networks (all from the main run) share a task.
  with open(tmp_path / "sharded" / "ensemble.json") as f:
    ensembles = json.load(f)
  shared = [s["budget"] for s in selection["solutions"] if len(s["networks"]) >= 2
            and not any(len(n["tasks"]) == 3 for n in s["networks"])
            and len({t for n in s["networks"] for t in n["tasks"]}) < sum(len(n["tasks"]) for n in s["networks"])]
  assert [e["budget"] for e in ensembles["budgets"] if e["tasks"]] == shared and ensembles["method"] == "hoa"
  # Every budget whose networks are all the main run's has an entry (budget 1.5 uses the retrained triple).
  assert [e["budget"] for e in ensembles["budgets"]] == [s["budget"] for s in selection["solutions"]
                                                        if not any(len(n["tasks"]) == 3 for n in s["networks"])]
  assert "## Ensembling" in (tmp_path / "sharded" / "report.md").read_text()
