"""Balancing methods, soft sharing, TAG and ensembles as the trainer runs them from a config."""

import functools
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_fakes
from tg_jax import balancing
from tg_jax import models
from tg_jax import records
from tg_jax import tasks as tasks_lib
from tg_jax.affinity import tag as tag_lib
from tg_jax.training import cohort
from tg_jax.training import config as config_lib
from tg_jax.training import ensemble
from tg_jax.training import networks
from tg_jax.training import trainer

TASKS = train_fakes.TOY_TASKS
ALL = "+".join(TASKS)
IMAGE_SHAPE = (train_fakes.IMAGE_SIZE, train_fakes.IMAGE_SIZE, 3)


def _batches(num_steps, batch_size=8):
  iterator = train_fakes.FakeDataset(TASKS, "train", 64).train_batches(batch_size, seed=0)
  return [{k: jnp.asarray(v) for k, v in next(iterator).items()} for _ in range(num_steps)]


def _optimizer(learning_rate=0.05):
  config = train_fakes.tiny_config().optimizer
  config.learning_rate = learning_rate
  return cohort.make_optimizer(config, steps_per_epoch=1000)  # no plateau cut within a test


def _train(model, gradient_fn, batches, rng=0, balancer=None, learning_rate=0.05, num_tasks=len(TASKS)):
  optimizer = _optimizer(learning_rate)
  state = cohort.init(model, optimizer, jax.random.PRNGKey(rng)[None], IMAGE_SHAPE, num_tasks, balancer)
  step = jax.jit(functools.partial(cohort.train_step, model=model, optimizer=optimizer, task_names=TASKS,
                                   task_mask=jnp.ones((1, num_tasks), bool), how=cohort.VMAP,
                                   gradient_fn=gradient_fn))
  for i, batch in enumerate(batches):
    state, metrics = step(state, batch, jnp.int32(i))
  return state, metrics


def _close(a, b, **tolerance):
  jax.tree.map(functools.partial(np.testing.assert_allclose, **(tolerance or {"rtol": 1e-5, "atol": 1e-6})), a, b)


def test_network_names_carry_a_method():
  network = networks.parse("toy_segment+toy_depth@0.5:mgda", TASKS)
  assert network == networks.Network(("toy_depth", "toy_segment"), 0.5, "mgda")
  assert network.name == "toy_depth+toy_segment@0.5:mgda"
  assert networks.parse(f"{ALL}:soft", TASKS).encoders == 3
  with pytest.raises(ValueError, match="unknown method 'mgdaa'.*cagrad.*pcgrad.*soft"):
    networks.parse(f"{ALL}:mgdaa", TASKS)
  with pytest.raises(ValueError, match="unknown method ''"):
    networks.parse(f"{ALL}:", TASKS)
  with pytest.raises(ValueError, match="needs at least two"):
    networks.parse("toy_depth:pcgrad", TASKS)
  listed = [networks.parse(n, TASKS) for n in
            ("toy_depth", ALL, f"{ALL}:mgda", "toy_depth+toy_normals:mgda", f"{ALL}:soft")]
  groups = networks.cohorts(listed, TASKS)
  # Equal weights share a cohort over their task union; each method network gets a model of its tasks.
  assert [(g.name, len(g.networks)) for g in groups] == [
      ("size_1", 2), (f"size_1_mgda_{ALL.replace('+', '-')}", 1), ("size_1_mgda_toy_depth-toy_normals", 1),
      (f"size_1_soft_{ALL.replace('+', '-')}", 1)]
  assert all(all(row) for g in groups[1:] for row in g.task_mask())


@pytest.mark.parametrize("method", ["equal", "uncertainty", "dwa", "imtl_l", "rlw", "famo"])
def test_loss_only_balancers_ignore_the_gradients(method):
  """The trainer skips per-task backward passes for these; their weights must not need them."""
  assert not balancing.needs_task_gradients(method)
  balancer = balancing.get(method, period=1) if method == "dwa" else balancing.get(method)
  real_state = zero_state = balancer.init(3)
  rng = np.random.default_rng(0)
  for _ in range(4):
    losses = jnp.asarray(rng.uniform(0.5, 2.0, 3), jnp.float32)
    grads = {"w": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)}
    _, real_state, real = balancer.update(losses, grads, real_state)
    _, zero_state, zero = balancer.update(losses, jnp.zeros((3, 1)), zero_state)
    np.testing.assert_array_equal(real["weights"], zero["weights"])
  assert all(balancing.needs_task_gradients(m) for m in ("mgda", "pcgrad", "cagrad", "imtl_g", "gradnorm"))


def test_balancer_equal_trains_exactly_like_the_papers_step():
  model = models.build(train_fakes.tiny_config().model, TASKS)
  batches = _batches(3)
  reference, _ = _train(model, None, batches)
  for needs_gradients in (True, False):  # the per-task (vmapped VJP) path and the one-backward path
    gradient_fn = cohort.balanced_gradients(model=model, task_names=TASKS, balancer=balancing.get("equal"),
                                            shared_names=cohort.shared_parameter_names(model, IMAGE_SHAPE),
                                            needs_task_gradients=needs_gradients)
    balanced, metrics = _train(model, gradient_fn, batches, balancer=balancing.get("equal"))
    _close(balanced.params, reference.params)
    np.testing.assert_allclose(metrics["task_weight"], np.full((1, 3), 1 / 3), rtol=1e-6)


def test_mgda_step_is_the_min_norm_combination_of_per_task_gradients():
  """Against a direct computation: jax.jacrev of the per-task losses, MGDA's weights from the
  encoder's Gram matrix, every parameter's gradient the weighted sum."""
  model = models.build(train_fakes.tiny_config().model, TASKS)
  batch = _batches(1)[0]
  variables = model.init(jax.random.PRNGKey(3), batch["image"], train=False)
  params, batch_stats = variables["params"], variables["batch_stats"]
  shared = cohort.shared_parameter_names(model, IMAGE_SHAPE)
  assert shared == ("encoder_conv", "encoder_norm")

  def per_task(p):
    outputs, _ = model.apply({"params": p, "batch_stats": batch_stats}, batch["image"], train=True,
                             mutable=["batch_stats"])
    return jnp.stack([jnp.mean(tasks_lib.get(t).loss(outputs[t], batch[t])) for t in TASKS])

  jacobian = jax.jacrev(per_task)(params)
  flat = jnp.concatenate([leaf.reshape(3, -1) for name in shared for leaf in jax.tree.leaves(jacobian[name])], axis=1)
  weights = balancing.min_norm_weights(flat @ flat.T)
  assert np.min(np.asarray(weights)) < 0.3  # not the equal weights: the test can tell them apart
  weights = weights / len(TASKS)  # the trainer divides every method's update by the number of tasks
  expected = jax.tree.map(lambda leaf: jnp.tensordot(weights, leaf, axes=1), jacobian)

  gradient_fn = cohort.balanced_gradients(model=model, task_names=TASKS, balancer=balancing.get("mgda"),
                                          shared_names=shared)
  result = jax.jit(gradient_fn)(params, batch_stats, jnp.ones(3, bool), (), batch)
  # This Gram (jacrev's, then centred) and the trainer's (a vmapped VJP, centred per leaf) differ in float32
  # rounding, which the exact solver carries through by the problem's conditioning. Equal weights are 0.19 off.
  np.testing.assert_allclose(result.weights, weights, atol=1e-3)
  # Per leaf, in norm: sum_t w'_t g'_t - sum_t w_t g_t is at most sum_t |w'_t - w_t| ||g_t|| (the weights'
  # measured difference) plus the per-task gradients' float32 rounding: 1e-5 of their weighted norms (100x the
  # ~1e-7 seen with XLA limited to AVX-512, AVX2, AVX or SSE4.2), and 1e-6 of the whole gradient's norm for the
  # encoder's conv bias, whose gradient is zero under batch norm (rounding noise). A missing term is off by
  # w_t ||g_t|| (over 1e-2 on every leaf a task moves), a weight off by d by d ||g_t||.
  assert jax.tree.structure(result.grads) == jax.tree.structure(expected)
  as64 = lambda x: np.asarray(x, np.float64)
  weight_error = np.abs(as64(result.weights) - as64(weights))
  floor = 1e-6 * np.sqrt(sum(np.sum(as64(leaf) ** 2) for leaf in jax.tree.leaves(expected)))
  for (path, want), got, task_grads in zip(jax.tree_util.tree_leaves_with_path(expected),
                                           jax.tree.leaves(result.grads), jax.tree.leaves(jacobian)):
    norms = np.linalg.norm(as64(task_grads).reshape(3, -1), axis=1)
    bound = weight_error @ norms + 1e-5 * (as64(weights) @ norms) + floor
    error = np.linalg.norm(as64(got) - as64(want))
    assert error <= bound, f"{jax.tree_util.keystr(path)}: |combined - expected| = {error:.3g} > {bound:.3g}"
  # The mean loss, reduced in another order (jitted vs eager): float32 rounding of ~1e3 terms (2.2e-7 with XLA
  # limited to AVX). A missing task moves it by over 1%.
  np.testing.assert_allclose(result.loss, jnp.mean(per_task(params)), rtol=1e-5)


def _soft_model():
  config = train_fakes.tiny_config().model
  return cohort.SoftSharedNetworks(tuple(models.build(config, (t,)) for t in TASKS))


def _soft_gradients(model, weight):
  return cohort.soft_sharing_gradients(model=model, task_names=TASKS, weight=weight,
                                       shared_names=cohort.shared_parameter_names(model.members[0], IMAGE_SHAPE))


def test_soft_sharing_without_penalty_is_independent_training():
  model = _soft_model()
  batches = _batches(3)
  soft, _ = _train(model, _soft_gradients(model, 0.0), batches)
  initial = cohort.init(model, _optimizer(), jax.random.PRNGKey(0)[None], IMAGE_SHAPE, 3)
  for i, task in enumerate(TASKS):
    alone = models.build(train_fakes.tiny_config().model, (task,))
    optimizer = _optimizer()
    start = jax.tree.map(lambda leaf: leaf[0], initial.params[f"members_{i}"])
    stats = jax.tree.map(lambda leaf: leaf[0], initial.batch_stats[f"members_{i}"])
    state = cohort.CohortState(
        params=jax.tree.map(lambda x: x[None], start), batch_stats=jax.tree.map(lambda x: x[None], stats),
        opt_state=jax.vmap(optimizer.init)(jax.tree.map(lambda x: x[None], start)),
        best_params=None, best_batch_stats=None, best_loss=None, best_step=None, best_task_loss=None,
        task_peak_loss=None, task_peak_step=None, esa_loss=None,
        diverged_step=jnp.full((1,), cohort.NOT_YET, jnp.int32))
    step = jax.jit(functools.partial(cohort.train_step, model=alone, optimizer=optimizer, task_names=(task,),
                                     task_mask=jnp.ones((1, 1), bool)))
    for j, batch in enumerate(batches):
      state, _ = step(state, batch, jnp.int32(j))
    _close(jax.tree.map(lambda x: x[0], soft.params[f"members_{i}"]), jax.tree.map(lambda x: x[0], state.params))
    assert not np.allclose(start["encoder_conv"]["kernel"], state.params["encoder_conv"]["kernel"][0])


def test_soft_sharing_penalty_pulls_the_encoders_together():
  model = _soft_model()
  batches = _batches(6)
  shared = cohort.shared_parameter_names(model.members[0], IMAGE_SHAPE)
  spread = lambda state: float(cohort.soft_sharing_penalty(jax.tree.map(lambda x: x[0], state.params), shared, 3))
  initial = cohort.init(model, _optimizer(), jax.random.PRNGKey(0)[None], IMAGE_SHAPE, 3)
  free, _ = _train(model, _soft_gradients(model, 0.0), batches)
  pulled, metrics = _train(model, _soft_gradients(model, 1.0), batches)
  assert spread(pulled) < 0.2 * spread(initial) and spread(pulled) < 0.2 * spread(free)
  assert np.isfinite(metrics["loss"]).all()


# --- The trainer, from a config ----------------------------------------------------------------


def _config(**overrides):
  config = train_fakes.tiny_config()
  config.networks.subsets = ""
  config.networks.half_size_singles = False
  config.networks.extra = ("toy_depth", ALL, f"{ALL}:mgda", f"{ALL}:uncertainty", f"{ALL}:soft")
  config.tag.enabled = True
  config.tag.every_steps = 3
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def _run(tmp_path, monkeypatch, name, on_step=None, **overrides):
  monkeypatch.setattr(train_fakes.FAKE_DATA, "on_step", on_step)
  workdir = str(tmp_path / name)
  return trainer.train_and_evaluate(_config(**overrides), workdir), workdir


def _results(workdir, file):
  with open(os.path.join(workdir, "results", file)) as f:
    return f.read()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One uninterrupted run, shared by the tests below (compiling it is most of their time)."""
  monkeypatch = pytest.MonkeyPatch()
  try:
    summary, workdir = _run(tmp_path_factory.mktemp("methods"), monkeypatch, "uninterrupted")
  finally:
    monkeypatch.undo()
  return summary, workdir


def test_method_networks_go_to_methods_json_not_the_tables(trained):
  summary, workdir = trained
  rows = [line.split(",")[0] for line in _results(workdir, "val.csv").splitlines()[1:]]
  assert rows == ["toy_depth", ALL]
  assert [line.split(",")[0] for line in _results(workdir, "test.csv").splitlines()[1:]] == rows
  methods = json.loads(_results(workdir, "methods.json"))
  assert list(methods) == [f"{ALL}:mgda", f"{ALL}:uncertainty", f"{ALL}:soft"]
  by_name = {n.name: n.to_json() for n in summary["run"].networks}
  for name, entry in methods.items():
    assert entry["method"] == name.split(":")[1] and entry["tasks"] == list(TASKS) and entry["size"] == 1.0
    assert entry["network_steps"] == 8
    assert entry["val"] == by_name[name]["val"] and entry["test"] == by_name[name]["test"]
    assert set(entry["val"]) == set(TASKS)
  # Each method trains its own network (the steps' maths is tested above): their losses differ.
  assert len({entry["test"]["toy_depth"] for entry in methods.values()}) == 3
  assert methods[f"{ALL}:soft"]["cost"] == pytest.approx(3 * methods[f"{ALL}:mgda"]["cost"])
  weights = [json.loads(line) for line in open(os.path.join(workdir, "log.jsonl"))]
  weights = [e["task_weight"] for e in weights if e["event"] == "train"]
  assert set(weights[-1]) == {f"{ALL}:mgda", f"{ALL}:uncertainty"}
  # MGDA-UB's weights sum to 1 on the sum of the losses; logged as weights on the mean (divided by 3 tasks).
  assert sum(weights[-1][f"{ALL}:mgda"].values()) == pytest.approx(1 / 3, abs=1e-5)


def test_tag_affinity_equals_a_direct_lookahead_computation(trained):
  """Replays the all-task network's training outside the trainer (same init, batches, optimiser)
  and computes the lookahead affinities at steps 0, 3 and 6 directly."""
  _, workdir = trained
  recorded = json.loads(_results(workdir, "tag.json"))
  config = _config()
  assert (recorded["tasks"], recorded["network"], recorded["every_steps"]) == (list(TASKS), ALL, 3)
  assert (recorded["measurements"], recorded["network_steps"]) == (3, 8)
  assert recorded["lookahead_network_steps"] == pytest.approx(3 * (1 + 3 * 3) / 3)

  position = [n.name for n in networks.from_config(config)].index(ALL)
  model = models.build(config.model, TASKS)
  optimizer = cohort.make_optimizer(config.optimizer, steps_per_epoch=2)
  state = cohort.init(model, optimizer, jax.random.fold_in(jax.random.PRNGKey(config.seed), position)[None],
                      IMAGE_SHAPE, 3)
  step_fn = jax.jit(functools.partial(cohort.train_step, model=model, optimizer=optimizer, task_names=TASKS,
                                      task_mask=jnp.ones((1, 3), bool), how=cohort.LOOP))

  def loss_fn(shared, rest, batch):
    outputs, _ = model.apply({"params": {**shared, **rest["params"]}, "batch_stats": rest["batch_stats"]},
                             batch["image"], train=True, mutable=["batch_stats"])
    return jnp.stack([jnp.mean(tasks_lib.get(t).loss(outputs[t], batch[t])) for t in TASKS])

  dataset = train_fakes.FakeDataset(TASKS, "train", config.data.num_train)
  total, count = np.zeros((3, 3)), 0
  for step, batch in zip(range(8), dataset.train_batches(config.batch_size, seed=config.seed)):
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    if step % 3 == 0:
      params = jax.tree.map(lambda x: x[0], state.params)
      shared = {k: v for k, v in params.items() if k.startswith("encoder")}
      heads = {k: v for k, v in params.items() if k.startswith("decoder")}
      learning_rate = config.optimizer.learning_rate * state.opt_state[1].scale[0]
      total += np.asarray(tag_lib.lookahead_affinity(
          loss_fn, shared, {"params": heads, "batch_stats": jax.tree.map(lambda x: x[0], state.batch_stats)},
          batch, learning_rate))
      count += 1
    state, _ = step_fn(state, batch, jnp.int32(step))
  np.testing.assert_allclose(recorded["affinity"], total / count, rtol=1e-3, atol=1e-6)
  assert np.abs(total).max() > 0


def test_resume_of_balanced_soft_and_tag_networks_matches_the_uninterrupted_run(trained, tmp_path, monkeypatch):
  _, uninterrupted = trained

  def preempt_at_step_4(step, batch):
    if step == 4:
      os.kill(os.getpid(), signal.SIGTERM)

  summary, resumed = _run(tmp_path, monkeypatch, "resumed", on_step=preempt_at_step_4)
  assert summary["status"] == trainer.STATUS_PREEMPTED and summary["step"] == 5
  summary, _ = _run(tmp_path, monkeypatch, "resumed")
  assert summary["status"] == trainer.STATUS_COMPLETE
  for file in ("val.csv", "test.csv", "methods.json", "tag.json"):
    assert _results(resumed, file) == _results(uninterrupted, file), file
  assert json.loads(_results(resumed, "networks.json")) == json.loads(_results(uninterrupted, "networks.json"))


def test_ensemble_of_a_network_with_itself_is_the_network(trained):
  _, workdir = trained
  config = _config()
  report = ensemble.evaluate(config, workdir, [ALL, ALL], split="test")
  test_losses = json.loads(_results(workdir, "networks.json"))["networks"][1]["test"]
  assert set(report) == set(TASKS)
  for task in TASKS:
    assert report[task]["networks"] == [ALL, ALL]
    # The single loss is the trainer's own test loss: the ensemble loads the best-validation parameters.
    assert report[task]["best_single_loss"] == pytest.approx(test_losses[task], rel=1e-5)
    assert report[task]["ensemble_loss"] == pytest.approx(report[task]["best_single_loss"], rel=1e-5)


def test_ensemble_of_two_networks_is_the_loss_of_the_averaged_prediction(trained):
  _, workdir = trained
  config = _config()
  names = ["toy_depth", ALL, f"{ALL}:mgda"]
  report = ensemble.evaluate(config, workdir, names, split="test")
  assert report["toy_depth"]["networks"] == names and report["toy_segment"]["networks"] == names[1:]

  dataset = train_fakes.FakeDataset(TASKS, "test", config.data.num_test)
  variables = ensemble.best_variables(config, workdir, names, IMAGE_SHAPE)
  arrays = next(iter(dataset.eval_batches(dataset.num_examples)))
  outputs = {n: model.apply(v, jnp.asarray(arrays["image"]), train=False) for n, (model, v) in variables.items()}
  depth = np.mean([np.asarray(outputs[n]["toy_depth"]) for n in names], axis=0)
  expected_depth = np.mean(np.abs(depth - arrays["toy_depth"]))
  probabilities = np.mean([np.asarray(jax.nn.softmax(outputs[n]["toy_segment"])) for n in names[1:]], axis=0)
  picked = np.take_along_axis(probabilities, arrays["toy_segment"][..., None], axis=-1)
  expected_segment = -np.mean(np.log(picked))
  assert report["toy_depth"]["ensemble_loss"] == pytest.approx(expected_depth, rel=1e-4)
  assert report["toy_segment"]["ensemble_loss"] == pytest.approx(expected_segment, rel=1e-4)
  methods = json.loads(_results(workdir, "methods.json"))
  assert report["toy_segment"]["single_losses"][f"{ALL}:mgda"] == pytest.approx(
      methods[f"{ALL}:mgda"]["test"]["toy_segment"], rel=1e-5)
  assert report["toy_depth"]["best_single_loss"] == min(report["toy_depth"]["single_losses"].values())


@pytest.mark.parametrize("key, value, message", [
    ("networks.extra", (f"{ALL}:gradsurgery",), "unknown method 'gradsurgery'"),
    ("balancing_options", {"cagrad": {"alpha": 1.0}}, "balancing_options.cagrad.*no option"),
    ("balancing_options", {"mgdb": {}}, "balancing_options.mgdb: unknown balancing method"),
    ("tag.network", f"{ALL}:mgda", "equal-weight network"),
    ("tag.network", "toy_normals+toy_segment", "not trained by this experiment"),
])
def test_method_config_errors_name_the_problem(tmp_path, monkeypatch, key, value, message):
  with pytest.raises(ValueError, match=message):
    _run(tmp_path, monkeypatch, "bad", **{key: value})


# The methods beyond the first eight; their maths is tested in test_balancing.py.
SHELF = ("imtl_l", "imtl", "rlw", "famo", "nash_mtl", "aligned_mtl", "gradvac", "graddrop", "db_mtl")


def test_every_method_of_the_shelf_trains_in_the_trainer(tmp_path, monkeypatch):
  """One short run with the all-task network trained by each method: each gets its cohort, trains every
  step to finite losses of its own, logs its task weights and reaches methods.json."""
  extra = tuple(f"{ALL}:{method}" for method in SHELF)
  _, workdir = _run(tmp_path, monkeypatch, "shelf", **{"networks.extra": extra, "tag.enabled": False})
  methods = json.loads(_results(workdir, "methods.json"))
  assert list(methods) == list(extra)
  for name, entry in methods.items():
    assert entry["network_steps"] == 8, name
    assert all(np.isfinite(entry["test"][t]) for t in TASKS), name
  assert len({entry["test"]["toy_depth"] for entry in methods.values()}) == len(SHELF)
  events = [json.loads(line) for line in open(os.path.join(workdir, "log.jsonl"))]
  logged = [e["task_weight"] for e in events if e["event"] == "train"][-1]
  assert set(logged) == set(extra)
  assert all(np.all(np.isfinite(list(weights.values()))) for weights in logged.values())


def test_methods_experiment_lists_every_group_and_every_method(monkeypatch):
  monkeypatch.chdir(config_lib.__file__.rsplit("/tg_jax/", 1)[0])
  for variant in ("", "full"):
    config = config_lib.load_experiment("experiments", "methods").get_config(variant)
    config_lib.validate(config)
    listed = networks.from_config(config)
    # Every group with equal weights, and the all-task network with every other method of the shelf.
    assert {n.method for n in listed} == ({""} | set(balancing.names()) - {"equal"} | {"soft"}
                                          | set(records.ARCHITECTURES))
    assert {n.tasks for n in listed if not n.method} >= set(networks.subsets(tuple(config.tasks), "all"))
    assert {n.tasks for n in listed if n.method} == {tuple(config.tasks)}
