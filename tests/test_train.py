"""The multi-network trainer: cohort maths, data parallelism, resume, divergence, config guards."""

import csv
import functools
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_fakes
from tg_jax import models
from tg_jax import records
from tg_jax.training import baseline
from tg_jax.training import checkpoints
from tg_jax.training import cohort
from tg_jax.training import networks
from tg_jax.training import trainer

TASKS = train_fakes.TOY_TASKS


def _batches(num_steps, batch_size=8):
  dataset = train_fakes.FakeDataset(TASKS, "train", 64)
  iterator = dataset.train_batches(batch_size, seed=0)
  return [{k: jnp.asarray(v) for k, v in next(iterator).items()} for _ in range(num_steps)]


def _train(model, tasks, mask, rngs, batches, how, learning_rate=0.1):
  config = train_fakes.tiny_config().optimizer
  config.learning_rate = learning_rate
  optimizer = cohort.make_optimizer(config, steps_per_epoch=2)
  state = cohort.init(model, optimizer, rngs, image_shape=batches[0]["image"].shape[1:], num_tasks=len(tasks))
  step = jax.jit(functools.partial(cohort.train_step, model=model, optimizer=optimizer, task_names=tasks,
                                   task_mask=jnp.asarray(mask), how=how))
  for i, batch in enumerate(batches):
    state, metrics = step(state, batch, jnp.int32(i))
  return state, metrics


@pytest.mark.parametrize("how", [cohort.VMAP, cohort.LOOP])
def test_network_in_cohort_equals_network_alone(how):
  """Network 0 trains depth only, inside a cohort whose model also carries a segmentation decoder
  and whose other network trains both; it must end where the same network trained alone ends."""
  model_config = train_fakes.tiny_config().model
  batches = _batches(4)
  rngs = jnp.stack([jax.random.PRNGKey(11), jax.random.PRNGKey(12)])
  cohort_model = models.build(model_config, ("toy_depth", "toy_segment"))
  together, _ = _train(cohort_model, ("toy_depth", "toy_segment"), [[True, False], [True, True]], rngs, batches, how)
  alone_model = models.build(model_config, ("toy_depth",))
  alone, _ = _train(alone_model, ("toy_depth",), [[True]], rngs[:1], batches, how)

  first = jax.tree.map(lambda x: x[0], together.params)
  alone_params = jax.tree.map(lambda x: x[0], alone.params)
  assert set(alone_params) < set(first)
  for name in alone_params:
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), first[name], alone_params[name])
  # And training moved them: the comparison is not between two copies of the initialisation.
  initial = cohort.init(alone_model, cohort.make_optimizer(train_fakes.tiny_config().optimizer, 2), rngs[:1],
                        batches[0]["image"].shape[1:], 1)
  assert not np.allclose(initial.params["decoder_toy_depth"]["kernel"], alone.params["decoder_toy_depth"]["kernel"])


def test_excluded_tasks_get_exactly_zero_gradient():
  model = models.build(train_fakes.tiny_config().model, TASKS)
  batch = _batches(1)[0]
  # Even a NaN in an excluded task's labels must not reach the gradient.
  batch["toy_normals"] = batch["toy_normals"].at[0].set(jnp.nan)
  variables = model.init(jax.random.PRNGKey(0), batch["image"], train=False)
  mask = jnp.asarray([True, False, False])
  grads, _ = jax.grad(cohort.network_loss, has_aux=True)(variables["params"], variables["batch_stats"], mask, batch,
                                                         model=model, task_names=TASKS)
  for excluded in ("decoder_toy_normals", "decoder_toy_segment"):
    for leaf in jax.tree.leaves(grads[excluded]):
      assert np.all(np.asarray(leaf) == 0.0), excluded
  assert np.any(np.asarray(grads["decoder_toy_depth"]["kernel"]) != 0)

  # Through the optimiser too: an excluded decoder never moves.
  state, metrics = _train(model, TASKS, [[True, False, False]], jax.random.PRNGKey(0)[None], _batches(3), cohort.VMAP)
  initial = model.init(jax.random.PRNGKey(0), batch["image"], train=False)["params"]
  np.testing.assert_array_equal(state.params["decoder_toy_segment"]["kernel"][0], initial["decoder_toy_segment"]["kernel"])
  assert np.isfinite(metrics["loss"]).all()


def _run(tmp_path, monkeypatch, name="run", on_step=None, **overrides):
  config = train_fakes.tiny_config()
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  monkeypatch.setattr(train_fakes.FAKE_DATA, "on_step", on_step)
  workdir = str(tmp_path / name)
  return trainer.train_and_evaluate(config, workdir), workdir


def _read(workdir, file):
  with open(os.path.join(workdir, "results", file)) as f:
    return f.read()


def test_run_writes_tables_that_beat_the_constant_predictor(tmp_path, monkeypatch):
  summary, workdir = _run(tmp_path, monkeypatch, num_epochs=6)
  assert summary["status"] == trainer.STATUS_COMPLETE
  rows = list(csv.DictReader(_read(workdir, "val.csv").splitlines()))
  assert [r["tasks"] for r in rows] == [n.name.split("@")[0] for n in networks.from_config(train_fakes.tiny_config())]
  assert rows[0]["toy_normals"] == ""  # the depth-only network has no normals loss
  assert {r["cost"] for r in rows[-3:]} != {"1.0"}  # half-size networks cost less
  for file in ("test.csv", "esa.csv"):
    assert len(_read(workdir, file).splitlines()) == len(rows) + 1
  report = json.loads(_read(workdir, "networks.json"))
  for network in report["networks"]:
    assert network["status"] == "trained"
    for task, improvement in network["improvement_over_constant"]["val"].items():
      assert improvement > 0, (network["name"], task, improvement)
  events = [json.loads(line)["event"] for line in open(os.path.join(workdir, "log.jsonl"))]
  assert events[-1] == "done" and "eval" in events and "train" in events


def test_validation_and_test_tables_come_from_one_checkpoint_per_network(tmp_path, monkeypatch):
  _, workdir = _run(tmp_path, monkeypatch, num_epochs=6)
  evals = {e["step"]: e["loss"] for e in map(json.loads, open(os.path.join(workdir, "log.jsonl")))
           if e["event"] == "eval"}
  val_rows = list(csv.DictReader(_read(workdir, "val.csv").splitlines()))
  run = records.RunRecord.from_json(json.loads(_read(workdir, "networks.json")))
  for record, row in zip(run.networks, val_rows):
    at_best_step = evals[record.best_step][record.name]
    # The table holds the losses of the checkpoint the test split is scored with, not each task's
    # minimum over validations (which no one parameter set need reach).
    assert {t: float(row[t]) for t in record.tasks} == at_best_step == record.val, record.name
    assert record.best_step == min(evals, key=lambda s: np.mean(list(evals[s][record.name].values())))
    assert record.val_peak == {t: min(evals[s][record.name][t] for s in evals) for t in record.tasks}


def test_record_validation_keeps_the_losses_of_the_best_checkpoint_not_per_task_minima():
  state = cohort.CohortState(
      params=jnp.zeros((1, 2)), batch_stats={}, opt_state=(), best_params=jnp.zeros((1, 2)), best_batch_stats={},
      best_loss=jnp.full((1,), jnp.inf), best_step=jnp.full((1,), cohort.NOT_YET, jnp.int32),
      best_task_loss=jnp.full((1, 2), jnp.inf), task_peak_loss=jnp.full((1, 2), jnp.inf),
      task_peak_step=jnp.full((1, 2), cohort.NOT_YET, jnp.int32), esa_loss=jnp.full((1, 2), jnp.inf),
      diverged_step=jnp.full((1,), cohort.NOT_YET, jnp.int32))
  mask = jnp.ones((1, 2), bool)
  # Task 0 peaks at step 1, task 1 at step 2; the mean is lowest at step 2.
  for step, losses in ((1, [1.0, 3.0]), (2, [1.5, 2.0])):
    state = cohort.record_validation(state, jnp.asarray([losses]), jnp.int32(step), jnp.bool_(False), mask)
  np.testing.assert_array_equal(state.best_task_loss, [[1.5, 2.0]])
  np.testing.assert_array_equal(state.best_step, [2])
  np.testing.assert_array_equal(state.task_peak_loss, [[1.0, 2.0]])
  np.testing.assert_array_equal(state.task_peak_step, [[1, 2]])


def test_two_devices_equal_one(tmp_path, monkeypatch):
  assert jax.device_count() >= 2, "tests/conftest.py should give the tests 2 CPU devices"
  _, one = _run(tmp_path, monkeypatch, "one", num_devices=1, num_epochs=2)
  _, two = _run(tmp_path, monkeypatch, "two", num_devices=2, num_epochs=2)
  for file in ("val.csv", "test.csv"):
    a = np.genfromtxt(_read(one, file).splitlines(), delimiter=",", skip_header=1)[:, 1:]
    b = np.genfromtxt(_read(two, file).splitlines(), delimiter=",", skip_header=1)[:, 1:]
    np.testing.assert_allclose(a, b, rtol=2e-4, equal_nan=True)


def test_sigterm_saves_and_resume_matches_an_uninterrupted_run_bitwise(tmp_path, monkeypatch):
  _, uninterrupted = _run(tmp_path, monkeypatch, "uninterrupted")

  def preempt_at_step_3(step, batch):
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  summary, resumed = _run(tmp_path, monkeypatch, "resumed", on_step=preempt_at_step_3)
  assert summary["status"] == trainer.STATUS_PREEMPTED and summary["step"] == 4
  assert not os.path.exists(os.path.join(resumed, "results", "test.csv"))
  summary, _ = _run(tmp_path, monkeypatch, "resumed")
  assert summary["status"] == trainer.STATUS_COMPLETE
  for file in ("val.csv", "test.csv", "esa.csv"):
    assert _read(resumed, file) == _read(uninterrupted, file), file
  assert json.loads(_read(resumed, "networks.json")) == json.loads(_read(uninterrupted, "networks.json"))


def test_crash_resumes_from_the_last_checkpoint(tmp_path, monkeypatch):
  _, uninterrupted = _run(tmp_path, monkeypatch, "uninterrupted", num_epochs=3)

  def crash_at_step_5(step, batch):
    if step == 5:  # after the checkpoint of step 4, like a kill -9
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    _run(tmp_path, monkeypatch, "crashed", on_step=crash_at_step_5, num_epochs=3)
  _run(tmp_path, monkeypatch, "crashed", num_epochs=3)
  for file in ("val.csv", "test.csv"):
    assert _read(tmp_path / "crashed", file) == _read(uninterrupted, file)
  steps = [json.loads(line)["step"] for line in open(tmp_path / "crashed" / "log.jsonl")]
  assert steps == sorted(steps)  # the log holds no duplicate tail from the crashed attempt


def test_diverged_network_is_stopped_and_left_out(tmp_path, monkeypatch):
  def poison_normals_from_step_3(step, batch):
    if step >= 3:
      batch["toy_normals"][:] = np.inf

  summary, workdir = _run(tmp_path, monkeypatch, on_step=poison_normals_from_step_3)
  status = {n.name: n.status for n in summary["run"].networks}
  assert {n for n, s in status.items() if s == "diverged"} == {"toy_normals", "toy_depth+toy_normals",
                                                               "toy_normals+toy_segment", "toy_normals@0.5"}
  rows = [r.split(",")[0] for r in _read(workdir, "val.csv").splitlines()[1:]]
  assert rows == ["toy_depth", "toy_segment", "toy_depth+toy_segment", "toy_depth", "toy_segment"]
  assert "toy_normals" not in _read(workdir, "test.csv").splitlines()[0]
  report = json.loads(_read(workdir, "networks.json"))
  assert all(n["diverged_step"] == 3 for n in report["networks"] if n["status"] == "diverged")


def test_a_workdir_of_another_config_refuses_to_resume(tmp_path, monkeypatch):
  _run(tmp_path, monkeypatch, num_epochs=1)
  with pytest.raises(checkpoints.ConfigMismatchError, match=r"optimizer\.learning_rate: 0\.05 in the workdir, 0\.1 now"):
    _run(tmp_path, monkeypatch, num_epochs=1, **{"optimizer.learning_rate": 0.1})


@pytest.mark.parametrize("key, value, message", [
    ("batch_size", 0, "batch_size must be >= 1"),
    ("epoch_fraction", 1.5, r"epoch_fraction must be in \(0, 1\]"),
    ("optimizer.plateau_factor", 2.0, "plateau_factor must be in"),
    ("network_parallelism", "pmap", "network_parallelism must be"),
    ("networks.subsets", "triples", "unknown config.networks.subsets 'triples'"),
    ("networks.extra", ("toy_depht",), "names task"),
    ("batch_size", 15, "must be divisible by the 2 devices"),
])
def test_config_errors_name_the_key(tmp_path, monkeypatch, key, value, message):
  overrides = {key: value}
  if key == "batch_size" and value == 15:
    overrides["num_devices"] = 2
  with pytest.raises(ValueError, match=message):
    _run(tmp_path, monkeypatch, **overrides)


def test_schedule():
  config = train_fakes.tiny_config()  # 128 examples, batch 16, epoch 25% -> 2 steps; 4 epochs
  schedule = records.Schedule.from_config(config, 128)
  assert (schedule.steps_per_epoch, schedule.stop_step, schedule.eval_steps, schedule.esa_step) == (2, 8, (2, 4, 6, 8), 4)
  config.stop_fraction, config.esa_fraction = 0.3, 0.2
  schedule = records.Schedule.from_config(config, 128)
  assert (schedule.stop_step, schedule.eval_steps, schedule.esa_step) == (2, (2,), 2)


def test_network_lists_shards_and_cohorts():
  config = train_fakes.tiny_config()
  listed = networks.from_config(config)
  assert [n.name for n in listed] == ["toy_depth", "toy_normals", "toy_segment", "toy_depth+toy_normals",
                                      "toy_depth+toy_segment", "toy_normals+toy_segment", "toy_depth@0.5",
                                      "toy_normals@0.5", "toy_segment@0.5"]
  assert all(networks.parse(n.name, TASKS) == n for n in listed)
  config.networks.subsets = "all"
  assert len(networks.from_config(config)) == 7 + 3
  shards = [networks.shard(listed, i, 4) for i in range(4)]
  assert sorted(n.name for s in shards for n in s) == sorted(n.name for n in listed)
  groups = networks.cohorts(listed, TASKS)
  assert [(g.size, len(g.networks)) for g in groups] == [(1.0, 6), (0.5, 3)]
  assert groups[1].task_mask() == [[True, False, False], [False, True, False], [False, False, True]]
  assert [len(c.networks) for c in groups[0].chunks(4)] == [4, 2]
  with pytest.raises(ValueError, match="num_shards"):
    networks.shard(listed, 4, 4)


def test_constant_predictor_is_the_training_mean():
  batches = [{"weight": np.asarray([1.0, 1.0, 0.0]),
              "toy_depth": np.asarray([1.0, 3.0, 100.0]).reshape(3, 1, 1, 1),
              "toy_segment": np.asarray([0, 2, 1]).reshape(3, 1, 1)}]
  constants = baseline.fit(batches, ("toy_depth", "toy_segment"))
  np.testing.assert_allclose(constants["toy_depth"], [2.0])
  np.testing.assert_allclose(np.exp(constants["toy_segment"]), [0.5, 1e-6, 0.5], rtol=1e-5)
  losses = baseline.losses(batches, constants)
  assert losses["toy_depth"] == pytest.approx(1.0)
  assert losses["toy_segment"] == pytest.approx(np.log(2.0), rel=1e-5)
