"""The adaptive loop driven through finish (training/adaptive.py, experiments/adaptive.py), with a
fake trainer that writes tables the way the trainer does."""

import json
import os

import pytest

from tg_jax import finish
from tg_jax.reporting import report
from tg_jax.training import adaptive as adaptive_training
from tg_jax.training import config as config_lib
from tg_jax.training import networks

from test_study import HALF, TASKS, _load, _write_run

# Converged validation losses of every candidate: b+c helps both most; half-size singles are worse.
TRUTH = {
    ("a",): {"a": 0.9}, ("b",): {"b": 0.9}, ("c",): {"c": 0.9},
    ("a", "b"): {"a": 0.85, "b": 0.88}, ("a", "c"): {"a": 0.87, "c": 0.86}, ("b", "c"): {"b": 0.6, "c": 0.62},
    ("a", "b", "c"): {"a": 0.8, "b": 0.7, "c": 0.72},
}
HALF_TRUTH = {t: {t: 1.0} for t in TASKS}


class EarlyAwareTrainer:
  """Writes val/test/esa tables for ``networks.extra`` (esa = 1.25 x val), like a run that stopped at
  ``stop_fraction``; records every call."""

  def __init__(self):
    self.calls = []

  def __call__(self, config, workdir):
    self.calls.append((config, workdir))
    rows = []
    for name in config.networks.extra:
      network = networks.parse(name, TASKS)
      losses = HALF_TRUTH[network.tasks[0]] if network.size == 0.5 else TRUTH[network.tasks]
      rows.append((network.tasks, HALF if network.size == 0.5 else 1.0, losses))
    _write_run(workdir, rows, test_scale=1.05, esa_scale=1.25)
    return {"status": "complete", "workdir": workdir}


def _config(trainings):
  config = _load("adaptive", "")
  config.tasks = TASKS
  config.selection.adaptive.trainings = trainings
  config.selection.adaptive.screen = 2
  config.selection.adaptive.promote = 1
  return config


def test_experiment_config_trains_singles_then_the_loop():
  config = _load("adaptive", "")
  config_lib.validate(config)
  assert config.networks.subsets == "singles" and config.selection.adaptive.trainings == pytest.approx(7.2)
  config.selection.adaptive.promote = 9
  with pytest.raises(ValueError, match="selection.adaptive screen and promote"):
    config_lib.validate(config)


def test_finish_screens_then_promotes_within_the_budget_and_resumes_without_retraining(tmp_path):
  workdir = str(tmp_path / "run")
  _write_run(workdir, [((t,), 1.0, TRUTH[(t,)]) for t in TASKS], esa_scale=1.25)
  config = _config(trainings=6.0)
  trainer = EarlyAwareTrainer()
  finish.finish(config, workdir, train=trainer, random_samples=5)
  value = json.load(open(os.path.join(workdir, "adaptive.json")))
  assert value["trainings"] <= 6.0
  # finish's retraining phase comes first (the surrogate's choices on the singles), then the loop.
  loop = [(derived, path) for derived, path in trainer.calls if os.sep + "adaptive" + os.sep in path]
  kinds = [os.path.basename(path) for _, path in loop]
  assert kinds[0] == "1_early" and all(k.endswith(("_early", "_full")) for k in kinds)
  for derived, path in loop:
    assert derived.stop_fraction == (config.esa_fraction if path.endswith("_early") else 1.0)
  promoted = [n for r in value["rounds"] for n in r["promoted"]]
  screened = [n for r in value["rounds"] for n in r["screened"]]
  assert value["trainings"] == pytest.approx(3 + len(promoted) + config.esa_fraction * len(screened))
  # b+c is what the selection wants once screened; it is trained to convergence and chosen at budget 2.
  assert "b+c" in promoted
  budget2 = next(s for s in value["selection"]["solutions"] if s["budget"] == 2.0)
  assert any(n["tasks"] == ["b", "c"] for n in budget2["networks"]) and budget2["test_loss"] is not None
  _check_report_shows_the_loop(workdir, value, budget2["test_loss"])
  os.remove(os.path.join(workdir, "report.md"))
  report.write_report(workdir)  # tg_jax.report: from the workdir's files alone
  _check_report_shows_the_loop(workdir, value, budget2["test_loss"])
  calls = len(trainer.calls)
  finish.finish(config, workdir, train=trainer, random_samples=5)
  assert len(trainer.calls) == calls  # every training's networks.json exists: read, not rerun
  assert json.load(open(os.path.join(workdir, "adaptive.json")))["rounds"] == value["rounds"]


def _check_report_shows_the_loop(workdir, value, total_at_2):
  text = open(os.path.join(workdir, "report.md"), encoding="utf-8").read()
  section = text.split("## Adaptive training", 1)[1].split("\n## ", 1)[0]
  assert f"{value['trainings']:g} trainings' worth ({100 * value['trainings'] / 10:.0f}% of the 10 trainings" in section
  for round_ in value["rounds"]:
    assert all(name in section for name in round_["screened"] + round_["promoted"])
  # At budget 2 the loop serves a from the all-task network a+b+c and b, c from b+c, as every grouping
  # table shows a network's decoders that serve nothing.
  assert f"| 2 | a (+b+c unused); b+c | {total_at_2:.3f} |" in section
  # Table 4 and the compute table carry the loop as a method of its own.
  table4 = text.split("## Table 4", 1)[1].split("\n## ", 1)[0]
  row = next(line for line in table4.splitlines() if line.startswith("| adaptive |"))
  assert f"{total_at_2:.3f}" in row
  compute = text.split("## Training compute per method", 1)[1].split("\n## ", 1)[0]
  assert any(line.startswith(f"| adaptive | {value['trainings']:.4g} |") for line in compute.splitlines())


def test_candidates_are_every_group_and_the_half_size_singles():
  keys = adaptive_training.candidates(("a", "b", "c"))
  assert len(keys) == 7 + 3 and len(set(keys)) == 10


def test_the_loop_trains_the_tiny_config_for_real(tmp_path):
  import train_fakes  # pylint: disable=g-import-not-at-top  (registers the toy model and data: imports JAX)
  from tg_jax import records, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from tg_jax.training import trainer  # pylint: disable=g-import-not-at-top
  config = train_fakes.tiny_config()
  config.networks.subsets = "singles"
  config.networks.half_size_singles = False
  config.selection.predict = "none"
  config.selection.adaptive.trainings = 5.0
  config.selection.adaptive.screen = 2
  config.selection.adaptive.promote = 1
  config_lib.validate(config)
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(config, workdir)
  finish.finish(config, workdir, random_samples=5)
  value = json.load(open(os.path.join(workdir, "adaptive.json")))
  assert 3 < value["trainings"] <= 5.0 and value["rounds"]
  schedule = records.Schedule.from_config(config, 128)
  assert value["network_steps"] == value["trainings"] * schedule.total_steps
  for entry in sorted(os.listdir(os.path.join(workdir, "adaptive"))):
    run = workdir_lib.Workdir(os.path.join(workdir, "adaptive", entry)).read_run()
    early = entry.endswith("_early")
    assert run.schedule.stop_step == (schedule.esa_step if early else schedule.total_steps), entry
  assert all(s["test_loss"] is not None for s in value["selection"]["solutions"] if not s.get("infeasible"))
