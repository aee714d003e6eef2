"""The multi-network trainer: cohort maths, data parallelism, resume, divergence, config guards, seed replicas."""

import csv
import functools
import itertools
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_fakes
from tg_jax import merge
from tg_jax import models
from tg_jax import records
from tg_jax import workdir as workdir_lib
from tg_jax.affinity import meter
from tg_jax.training import baseline
from tg_jax.training import checkpoints
from tg_jax.training import cohort
from tg_jax.training import config as config_lib
from tg_jax.training import cohorts
from tg_jax.training import networks
from tg_jax.training import planning
from tg_jax.training import results
from tg_jax.training import retrain
from tg_jax.training import trainer
from tg_jax.training import transfer

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



def test_evaluation_of_own_decoders_only_equals_full_evaluation_on_own_tasks():
  """Under ``"loop"`` with a task mask, each network runs only its own decoders; its own tasks'
  losses (sums and per example) are those of the full model's evaluation."""
  model = models.build(train_fakes.tiny_config().model, TASKS)
  mask = np.asarray([[True, False, False], [False, True, True]])
  state, _ = _train(model, TASKS, mask.tolist(), jnp.stack([jax.random.PRNGKey(3), jax.random.PRNGKey(4)]),
                    _batches(2), cohort.LOOP)
  batch = dict(_batches(1)[0], weight=jnp.ones((8,), jnp.float32))
  evaluate = functools.partial(cohort.eval_losses, state.params, state.batch_stats, batch, model=model,
                               task_names=TASKS, how=cohort.LOOP)
  full_sums, full_examples = evaluate()
  own_sums, own_examples = evaluate(task_mask=jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(own_sums)[mask], np.asarray(full_sums)[mask], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(own_examples)[mask], np.asarray(full_examples)[mask], rtol=1e-6)
  # The untrained decoders were skipped: their losses are those of a zero output, not the model's.
  assert not np.allclose(np.asarray(own_sums)[~mask], np.asarray(full_sums)[~mask])

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
    ("networks.seeds", 0, r"networks.seeds must be a count >= 1 or a non-empty list of distinct seeds >= 0, got 0"),
    ("networks.seeds", (1, 1), r"networks.seeds must be .* got \(1, 1\)"),
    ("networks.seeds", (), "networks.seeds must be"),
    ("networks.extra", ("toy_depth#1",), r"names seed replicas \(toy_depth#1\).*config.networks.seeds"),
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


def test_all_task_sizes_widen_every_all_task_network_of_the_list():
  config = train_fakes.tiny_config()
  config.networks.subsets = "all"
  config.networks.extra = ("toy_depth+toy_normals+toy_segment:mgda", "toy_depth+toy_normals:pcgrad")
  config.networks.all_task_sizes = (1.5, 2)
  listed = [n.name for n in networks.from_config(config)]
  everything = "toy_depth+toy_normals+toy_segment"
  assert listed[-4:] == [f"{everything}@1.5", f"{everything}@1.5:mgda", f"{everything}@2", f"{everything}@2:mgda"]
  assert not any(name.startswith("toy_depth+toy_normals@") for name in listed)  # not an all-task network
  config.networks.subsets = "pairs"
  config.networks.extra = ()
  with pytest.raises(ValueError, match="has none; set networks.subsets = 'all'"):
    networks.from_config(config)
  config.networks.subsets = "all"
  config.networks.all_task_sizes = (2, 0)
  with pytest.raises(ValueError, match="all_task_sizes must be sizes > 0"):
    networks.from_config(config)
  config.networks.all_task_sizes = (1,)  # the full-size all-task network again
  with pytest.raises(ValueError, match="networks listed twice"):
    networks.from_config(config)


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


def test_seed_replicas_are_named_listed_grouped_and_initialised_apart():
  config = train_fakes.tiny_config()
  config.networks.seeds = (0, 3)
  listed = networks.from_config(config)
  one_seed = networks.from_config(train_fakes.tiny_config())
  assert listed == one_seed + [n.replica(3) for n in one_seed]  # seed after seed; seed 0 is the one-seed list
  assert [n.name for n in listed[9:11]] == ["toy_depth#3", "toy_normals#3"] and listed[-1].name == "toy_segment@0.5#3"
  assert all(networks.parse(n.name, TASKS) == n for n in listed)
  assert networks.parse("toy_depth+toy_normals:mgda#2", TASKS) == records.Network(("toy_depth", "toy_normals"), 1.0,
                                                                                "mgda", 2)
  with pytest.raises(ValueError, match="seed 'x' is not a non-negative integer"):
    networks.parse("toy_depth#x", TASKS)
  assert [(c.name, len(c.networks)) for c in networks.cohorts(listed, TASKS)] == [
      ("size_1", 6), ("size_0.5", 3), ("size_1_seed3", 6), ("size_0.5_seed3", 3)]
  positions = networks.positions(listed)
  assert [positions[n] for n in listed] == list(range(9)) * 2
  # Initialisation: seed 0 keeps a one-seed run's key, fold_in(PRNGKey(seed), position); others fold in their seed.
  np.testing.assert_array_equal(cohorts.network_rng(7, 4, 0), jax.random.fold_in(jax.random.PRNGKey(7), 4))
  assert not np.array_equal(cohorts.network_rng(7, 4, 3), cohorts.network_rng(7, 4, 0))
  # Training batches: seed 0 reads a one-seed run's stream; other replicas streams of their own.
  assert trainer.data_seed(7, 0) == 7 and len({trainer.data_seed(7, s) for s in range(4)} | {8}) == 5
  # TAG measures the first seed's replica; ensembles and the retraining phase get names of one seed.
  config.tag.enabled = True
  config.networks.subsets = "all"
  assert meter.measured_network(config, networks.from_config(config)).name == "toy_depth+toy_normals+toy_segment"
  config.networks.seeds = (3, 5)
  assert meter.measured_network(config, networks.from_config(config)).seed == 3
  derived = retrain.derived_config(config, ["toy_depth#3", "toy_depth", "toy_normals+toy_segment#5"])
  assert tuple(derived.networks.extra) == ("toy_depth", "toy_normals+toy_segment")
  assert tuple(derived.networks.seeds) == (3, 5) and len(networks.from_config(derived)) == 4
  # A study widens its all-task network; the retraining and transfer phases train only their lists.
  config.networks.all_task_sizes = (2.0,)
  assert any(n.size == 2.0 for n in networks.from_config(config))
  for derived in (retrain.derived_config(config, ["toy_depth"]), transfer.derived_config(config)):
    config_lib.validate(derived)
    assert all(n.size == 1.0 for n in networks.from_config(derived))


def test_network_records_without_a_seed_read_as_seed_0_and_rows_are_named_by_their_lowest_seed():
  losses = {"toy_depth": 0.5}
  record = records.NetworkRecord(
      name="toy_depth", tasks=("toy_depth",), size=1.0, method="", cost=1.0, status=records.TRAINED, best_step=2,
      val=losses, test=losses, esa=losses, val_peak=losses, val_peak_step={"toy_depth": 2},
      improvement_over_constant={"val": losses, "test": losses})
  value = record.to_json()
  assert value.pop("seed") == 0 and records.NetworkRecord.from_json(value) == record
  replicas = [records.NetworkRecord(**{**record.to_json(), "tasks": ("toy_depth",), "seed": s,
                                       "name": f"toy_depth#{s}"}) for s in (5, 3)]
  schedule = records.Schedule(2, 8, 8, (2, 4, 6, 8), 4)
  run = records.RunRecord(tuple(replicas), {}, schedule)
  assert records.names_of([run], [(("toy_depth",), 1.0), (("toy_normals",), 0.5)], TASKS) == [
      "toy_depth#3", "toy_normals@0.5"]


def _seed_config(seeds):
  """Five networks (two sizes, a masked cohort of three, a balancing method's cohort), 4 steps,
  ``seeds`` replicas of each."""
  config = train_fakes.tiny_config()
  config.num_epochs = 2
  config.networks.subsets = "singles"
  config.networks.half_size_singles = False
  config.networks.extra = ("toy_segment@0.5", "toy_depth+toy_normals:equal")
  config.networks.seeds = seeds
  return config


@pytest.fixture(scope="module")
def seeded_runs(tmp_path_factory):
  """The one-seed and the two-seed run of ``_seed_config``, and the two-seed run's training batches
  as ``(step, images)`` in the order they were read."""
  root = tmp_path_factory.mktemp("seeds")
  batches = []
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(train_fakes.FAKE_DATA, "on_step", None)
    trainer.train_and_evaluate(_seed_config(1), str(root / "one"))
    patch.setattr(train_fakes.FAKE_DATA, "on_step", lambda step, batch: batches.append((step, batch["image"].copy())))
    trainer.train_and_evaluate(_seed_config(2), str(root / "two"))
  return workdir_lib.Workdir(str(root / "one")), workdir_lib.Workdir(str(root / "two")), batches


def _csv(workdir, split):
  with open(workdir.table(split)) as f:
    return list(csv.reader(f))


def _assert_same_results(workdir, reference, exact=True):
  """The same tables, per-example losses, network records and methods.json: bitwise, or (``exact``
  False) the same rows, names and seeds with losses equal to float32 rounding carried through training.

  A shard trains its networks in smaller cohorts, other XLA programs than the whole run's: their
  losses agree to float32 rounding (``test_main``'s merged shards: under 1e-4 relative), while another
  seed moves every loss by 3e-4 to 0.3.
  """
  close = lambda ours, theirs, what: np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6, err_msg=what)
  for split in workdir_lib.SPLITS:
    ours, theirs = _csv(workdir, split), _csv(reference, split)
    if exact:
      assert ours == theirs, split
      continue
    assert ours[0] == theirs[0] and [r[:3] for r in ours] == [r[:3] for r in theirs], split
    close(*(np.asarray([[float(c) if c else np.nan for c in r[3:]] for r in rows[1:]]) for rows in (ours, theirs)),
          split)
  for split in workdir_lib.EXAMPLE_SPLITS:
    ours, theirs = workdir.read_examples(split), reference.read_examples(split)
    assert (ours.tasks, ours.networks) == (theirs.tasks, theirs.networks), split
    if exact:
      np.testing.assert_array_equal(ours.losses, theirs.losses)
    else:
      close(ours.losses, theirs.losses, split)
  ours, theirs = workdir.read_run().networks, reference.read_run().networks
  if exact:
    assert ours == theirs
    assert workdir.read_methods() == reference.read_methods()
    return
  assert [(n.name, n.seed, n.status) for n in ours] == [(n.name, n.seed, n.status) for n in theirs]
  for a, b in zip(ours, theirs):
    close([a.val[t] for t in a.tasks] + [a.test[t] for t in a.tasks],
          [b.val[t] for t in b.tasks] + [b.test[t] for t in b.tasks], a.name)
  assert list(workdir.read_methods()) == list(reference.read_methods())


def test_two_seeds_train_every_network_twice_and_seed_0_is_the_one_seed_run_bitwise(seeded_runs):
  one, two, batches = seeded_runs
  for split in workdir_lib.SPLITS:
    single, replicated = _csv(one, split), _csv(two, split)
    assert replicated[0] == single[0][:2] + ["seed"] + single[0][2:], split
    assert [row[2] for row in replicated[1:]] == ["0", "1"] * 4, split  # network by network, seeds ascending
    seed_0 = [row[:2] + row[3:] for row in replicated[1:] if row[2] == "0"]
    seed_1 = [row[:2] + row[3:] for row in replicated[1:] if row[2] == "1"]
    assert seed_0 == single[1:], split  # the same float32 losses, written alike
    for first, second in zip(seed_0, seed_1):  # replicas differ on every task they solve
      assert first[:2] == second[:2] and all(a != b for a, b in zip(first[2:], second[2:]) if a), split
  base = one.read_run().networks
  run = two.read_run().networks
  assert [n.name for n in run] == [n.name for n in base] + [f"{n.name}#1" for n in base]
  assert [n.seed for n in run] == [0] * 5 + [1] * 5
  assert run[:5] == base  # the seed-0 replicas' records are the one-seed run's, every step and loss
  # A balancing method's network: one methods.json entry per replica, by name.
  methods, single_methods = two.read_methods(), one.read_methods()
  method = "toy_depth+toy_normals:equal"
  assert list(methods) == [method, f"{method}#1"] and methods[f"{method}#1"]["seed"] == 1
  assert methods[method] == single_methods[method] and methods[method]["val"] != methods[f"{method}#1"]["val"]
  # Each step read two different batches, one per seed (independent data order).
  by_step = {}
  for step, images in batches:
    by_step.setdefault(step, []).append(images)
  assert sorted(by_step) == [0, 1, 2, 3]
  assert all(len(images) == 2 and not np.array_equal(*images) for images in by_step.values())


def test_examples_files_hold_the_per_example_losses_behind_the_tables(seeded_runs):
  _, two, _ = seeded_runs
  names = [n.name for n in two.read_run().networks if not n.method]
  for split in workdir_lib.EXAMPLE_SPLITS:
    examples, table = two.read_examples(split), two.read_table(split)
    assert examples.losses.shape == (8, 40, 3) and examples.losses.dtype == np.float32  # [rows, examples, tasks]
    assert examples.tasks == table.table.task_names
    assert list(examples.networks) == [n for pair in zip(names[:4], names[4:]) for n in pair]  # the CSV's rows
    for row, (tasks, _, _, losses) in enumerate(table.rows()):
      for column, task in enumerate(examples.tasks):
        values = examples.losses[row, :, column]
        if task not in tasks:
          assert np.isnan(values).all()
          continue
        # The table's loss is a float32 sum over batches (in XLA's order) divided by the count; the
        # file's mean is float64 over the same float32 losses: they agree to float32 rounding of a
        # 40-term sum, a relative 40 * 2**-24 ~ 2.4e-6 at worst.
        np.testing.assert_allclose(values.astype(np.float64).mean(), losses[task], rtol=1e-5)


def test_resume_of_a_two_seed_run_matches_an_uninterrupted_one_bitwise(seeded_runs, tmp_path, monkeypatch):
  _, two, _ = seeded_runs

  def preempt_at_step_1(step, batch):
    if step == 1:
      os.kill(os.getpid(), signal.SIGTERM)

  resumed = workdir_lib.Workdir(str(tmp_path / "resumed"))
  monkeypatch.setattr(train_fakes.FAKE_DATA, "on_step", preempt_at_step_1)
  summary = trainer.train_and_evaluate(_seed_config(2), resumed.path)
  assert summary["status"] == trainer.STATUS_PREEMPTED and summary["step"] == 2
  monkeypatch.setattr(train_fakes.FAKE_DATA, "on_step", None)
  assert trainer.train_and_evaluate(_seed_config(2), resumed.path)["status"] == trainer.STATUS_COMPLETE
  _assert_same_results(resumed, two)


def test_sharded_two_seed_run_merges_into_the_unsharded_results(seeded_runs, tmp_path, monkeypatch):
  _, two, _ = seeded_runs
  monkeypatch.setattr(train_fakes.FAKE_DATA, "on_step", None)
  sharded = workdir_lib.Workdir(str(tmp_path / "sharded"))
  for index in range(2):
    trainer.train_and_evaluate(_seed_config(2), sharded.shard(index, 2).path, shard_index=index, num_shards=2)
  # Striding over the 10 replicas gives shard 0 seed 0's replicas of three networks (one with a method)
  # and seed 1's of two: one replica of each of its networks, and still the seed column.
  first = sharded.shard(0, 2)
  assert _csv(first, "val")[0][2] == "seed" and first.read_table("val").seeds == ((0,), (0,), (1,), (1,))
  merge.merge(sharded.path)
  _assert_same_results(sharded, two, exact=False)


def test_select_prints_intervals_for_a_two_seed_workdir(seeded_runs):
  _, two, _ = seeded_runs
  printed = subprocess.run([sys.executable, "-m", "tg_jax.select", f"--results={two.table('val')}",
                            f"--test_results={two.table('test')}", "--bootstrap=200"],
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), capture_output=True,
                           text=True, check=True).stdout
  assert "95% intervals over 2 seeds" in printed


def test_a_workdir_from_before_seed_replicas_resumes_as_one_seed(tmp_path):
  config = train_fakes.tiny_config()
  written = json.loads(checkpoints.config_to_json(config))
  del written["networks"]["seeds"]  # config.json of a run made before networks.seeds existed
  (tmp_path / checkpoints.CONFIG_FILE).write_text(json.dumps(written))
  assert checkpoints.check_or_write_config(config, str(tmp_path))
  config.networks.seeds = 2
  with pytest.raises(checkpoints.ConfigMismatchError, match="networks.seeds: 1 in the workdir, 2 now"):
    checkpoints.check_or_write_config(config, str(tmp_path))


def test_a_run_whose_programs_would_pass_the_mapping_limit_stops_before_compiling_the_rest(tmp_path, monkeypatch):
  """XLA:CPU maps ~3 memory regions per compiled kernel; past vm.max_map_count it segfaults. The
  planner projects the regions from the first cohort's step and stops with the fix instead.

  The process's real region count depends on what earlier tests left mapped and what the garbage
  collector frees meanwhile, so a counter stands in for it: 500 more regions at every reading, 2,000
  allowed (the projection's arithmetic: test_the_mapping_projection_counts_distinct_programs)."""
  config = train_fakes.tiny_config()
  config.networks.half_size_singles = True  # two cohorts: full- and half-size networks
  readings = itertools.count(1000, 500)
  monkeypatch.setattr(planning, "mapped_regions", lambda: next(readings))
  monkeypatch.setattr(planning, "mapping_limit", lambda: 2000)
  with pytest.raises(planning.MappingLimitError, match=r"2 cohorts would map .*\(vm\.max_map_count\).*sysctl -w vm\.max_map_count="):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints" / "1")


def test_the_mapping_projection_counts_distinct_programs():
  planning.check_mappings(before=1000, now=3000, limit=65530, planned=1, total=10)  # 33,000: fits
  with pytest.raises(planning.MappingLimitError, match="20 cohorts would map about 65,000"):
    planning.check_mappings(before=1000, now=3000, limit=65530, planned=1, total=20)
  planning.check_mappings(before=None, now=3000, limit=65530, planned=1, total=20)  # no /proc: no check


def test_progress_rate_forgets_a_slow_start(monkeypatch):
  # A resumed run's first validation compiles for minutes; the steps/s and ETA must recover once
  # that interval leaves the window, instead of averaging it into the rest of the run.
  clock = [0.0]
  monkeypatch.setattr(results.time, "time", lambda: clock[0])
  progress = results.Progress(stop_step=300)
  progress.start_timing(26)
  clock[0] += 600.0  # steps 26-30 and a compiling validation
  assert "0.01 steps/s" in progress.line(30)
  for step in range(35, 35 + 5 * results.Progress.RATE_WINDOW, 5):
    clock[0] += 10.0  # 0.5 steps/s from here on
    line = progress.line(step)
  assert "0.50 steps/s" in line and line.endswith("ETA 7m20s"), line
