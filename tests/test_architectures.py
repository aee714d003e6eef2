"""The architecture families MTAN, cross-stitch and MMoE: shapes, what they share, cost, balancing, training."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import train_fakes
from tg_jax import balancing
from tg_jax import models
from tg_jax import records as records_lib
from tg_jax import tasks as tasks_lib
from tg_jax.models import backbone
from tg_jax.models import cross_stitch
from tg_jax.models import registry
from tg_jax.training import cohort
from tg_jax.training import cohorts as cohorts_lib
from tg_jax.training import config as config_lib
from tg_jax.training import networks
from tg_jax.training import trainer

FAMILIES = ("mtan", "cross_stitch", "mmoe")
TASKS = ("toy_depth", "toy_segment")  # a dense regression and a segmentation (train_fakes' toy tasks)
IMAGE_SHAPE = (train_fakes.IMAGE_SIZE, train_fakes.IMAGE_SIZE, 3)
# Which top-level parameter collections every task shares (``encode``'s): the rest belong to one task.
SHARED_PREFIXES = {"mtan": ("stages_",), "cross_stitch": ("columns_", "stitch_"), "mmoe": ("experts_",)}


def tiny_config(name):
  """The family at a few channels and 16x16 images, so tests compile in seconds."""
  config = models.default_config("cpu", name)
  config.encoder_widths = (4, 4, 6, 6, 8)
  config.representation_width = 4
  config.decoder_widths = (4, 4, 4, 4)
  config.decoder_skip_width = 2
  config.cost_image_size = train_fakes.IMAGE_SIZE
  return config


def _images(batch=4, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, *IMAGE_SHAPE))


def _init(net, images):
  return jax.jit(functools.partial(net.init, train=False),
                 compiler_options={"xla_backend_optimization_level": 0})(jax.random.key(0), images)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
  """A family's two-task network at size 1, a batch of labelled images and its initial variables."""
  config = tiny_config(request.param)
  net = models.build(config, TASKS)
  batch = next(train_fakes.FakeDataset(TASKS, "train", 32).train_batches(8, seed=0))
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  return request.param, config, net, batch, _init(net, batch["image"])


def test_the_registry_finds_every_family_by_name():
  assert set(FAMILIES) < set(models.names())
  for name in FAMILIES:
    assert models.default_config("paper", name).name == name
    assert not models.shares_one_encoder(models.default_config("cpu", name))
  assert models.shares_one_encoder(models.default_config("cpu"))
  with pytest.raises(KeyError, match="unknown model 'mtann'.*cross_stitch.*mmoe.*mtan.*xception"):
    registry.get("mtann")


def test_outputs_are_encode_then_each_tasks_decode(family):
  """The family contract (``registry.ModelFamily``): dense outputs at input resolution, and
  ``__call__`` is ``encode`` followed by every task's ``decode``, which is its head on ``features``."""
  _, config, net, batch, variables = family
  outputs, _ = net.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
  assert {t: o.shape for t, o in outputs.items()} == {"toy_depth": (8, 16, 16, 1), "toy_segment": (8, 16, 16, 3)}
  eval_outputs = net.apply(variables, batch["image"], train=False)
  shared = net.apply(variables, batch["image"], False, method=net.encode)
  features = net.apply(variables, batch["image"], False, method=net.features)
  for task in TASKS:
    decoded = net.apply(variables, task, shared, False, method=net.decode)
    np.testing.assert_array_equal(decoded, eval_outputs[task])
    assert features[task].shape == (8, 1, 1, config.representation_width)


def _reach(net, variables, batch):
  """Per parameter leaf (its path), the tasks whose loss has a nonzero gradient there."""
  def per_task(params):
    outputs, _ = net.apply({**variables, "params": params}, batch["image"], train=True, mutable=["batch_stats"])
    return jnp.stack([jnp.mean(tasks_lib.get(t).loss(outputs[t], batch[t])) for t in TASKS])
  jacobian = jax.jit(jax.jacrev(per_task))(variables["params"])
  return {jax.tree_util.keystr(path): {t for t, row in zip(TASKS, leaf) if np.any(row)}
          for path, leaf in jax.tree_util.tree_leaves_with_path(jacobian)}


def test_shared_parameters_are_exactly_those_every_task_reaches(family):
  """What balancing methods weigh (``cohort.shared_parameter_names``: ``encode``'s collections) is
  what every task's loss moves; every other parameter is moved by one task's loss at most."""
  name, _, net, batch, variables = family
  shared = cohort.shared_parameter_names(net, IMAGE_SHAPE)
  assert shared and all(s.startswith(SHARED_PREFIXES[name]) for s in shared)
  assert {k for k in variables["params"] if k.startswith(SHARED_PREFIXES[name])} == set(shared)
  reach = _reach(net, variables, batch)
  for path, tasks in reach.items():
    top = path.split("'")[1]
    if top in shared:
      # A convolution's bias under batch norm is the one shared leaf no loss moves (batch norm removes it).
      assert tasks == set(TASKS) or (path.endswith("['bias']") and not tasks), (path, tasks)
    else:
      assert len(tasks) <= 1, (path, tasks)
  for task in TASKS:  # each task's own parts: its head, and its attention, output stitch or gate
    own = [p for p, tasks in reach.items() if tasks == {task}]
    assert any(f"decoder_{task}" in p for p in own)
    assert any(f"_{task}'" in p for p in own if "heads" not in p), own


# Cross-stitch stands for the families: balancing sees only ``shared_parameter_names``, which
# test_shared_parameters_are_exactly_those_every_task_reaches checks for each family.
@pytest.mark.parametrize("family", ["cross_stitch"], indirect=True)
def test_balancing_weighs_the_shared_parameters_and_scales_each_tasks_own(family):
  """A gradient method's step on a family network, against a direct computation from jax.jacrev: the
  balancer sees the shared parameters' per-task gradients; each task's own parameters get its
  gradient times its weight. MGDA-UB combines linearly, so every shared leaf is sum_t w_t g_t too.
  (Methods that combine the shared gradients otherwise, e.g. GradDrop, go through the same
  ``cohort.balanced_gradients``; test_methods_training checks them on the paper's network.)"""
  method = "mgda"
  _, _, net, batch, variables = family
  params, batch_stats = variables["params"], variables["batch_stats"]
  shared = cohort.shared_parameter_names(net, IMAGE_SHAPE)

  def per_task(p):
    outputs, _ = net.apply({"params": p, "batch_stats": batch_stats}, batch["image"], train=True,
                           mutable=["batch_stats"])
    return jnp.stack([jnp.mean(tasks_lib.get(t).loss(outputs[t], batch[t])) for t in TASKS])

  jacobian = jax.jit(jax.jacrev(per_task))(params)
  balancer = balancing.get(method)
  gradient_fn = cohort.balanced_gradients(model=net, task_names=TASKS, balancer=balancer, shared_names=shared)
  state = balancer.init(len(TASKS), {k: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params[k])
                                     for k in shared})
  result = jax.jit(gradient_fn)(params, batch_stats, jnp.ones(len(TASKS), bool), state, batch)
  weights = np.asarray(result.weights, np.float64)
  assert np.all(np.isfinite(weights)) and weights.sum() > 0
  flat = jnp.concatenate([leaf.reshape(len(TASKS), -1) for k in shared for leaf in jax.tree.leaves(jacobian[k])],
                         axis=1)
  # The trainer's Gram (a vmapped VJP, centred per leaf) and this one differ in float32 rounding only.
  # The trainer divides every method's update by the number of tasks.
  np.testing.assert_allclose(weights, balancing.min_norm_weights(flat @ flat.T) / len(TASKS), atol=1e-3)
  for k in params:
    for (path, got), task_grads in zip(jax.tree_util.tree_leaves_with_path(result.grads[k]),
                                       jax.tree.leaves(jacobian[k])):
      task_grads = np.asarray(task_grads, np.float64)
      want = np.tensordot(weights, task_grads, axes=1)
      # float32 rounding of the per-task gradients, relative to their weighted norms (see test_methods_training).
      bound = 1e-5 * (weights @ np.linalg.norm(task_grads.reshape(len(TASKS), -1), axis=1)) + 1e-7
      assert np.linalg.norm(np.asarray(got, np.float64) - want) <= bound, (k, jax.tree_util.keystr(path))


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("num_tasks", [1, 3])
@pytest.mark.parametrize("size", [0.5, 1.0])
def test_cost_is_everything_before_the_heads_and_matches_the_size(name, num_tasks, size):
  """A network of any task count costs its size, in standard networks (xception's encoder at the
  config's widths). Widths are whole channels, so the search ends at the rounded network nearest
  the target: at the CPU config's widths (8 to 48) one channel moves the cost by up to 3%."""
  config = models.default_config("cpu", name)
  assert models.encoder_cost(config, size, num_tasks=num_tasks) == pytest.approx(size, rel=0.03)
  with pytest.raises(ValueError, match="pass num_tasks"):
    models.encoder_cost(config, size)


COST_IMAGE = (32, 32, 3)


def _flops(net, method="encode"):
  return models.encoder_flops(net, COST_IMAGE, method)


def _stitch_flops(config, num_tasks, multiplier):
  """A ``num_tasks``-task cross-stitch network's stitches: a multiply-add per column pair and element
  of each inner stage boundary's output, and per task one per column and element of the last stage's."""
  widths = backbone.stage_widths(backbone.encoder(config, multiplier))
  height, width, _ = COST_IMAGE
  elements = [height * width // 4**(stage + 1) * widths[stage] for stage in range(backbone.NUM_STAGES - 1)]
  last = height * width // 4**4 * widths[-1]
  return 2 * num_tasks**2 * sum(elements) + num_tasks * 2 * num_tasks * last


@pytest.mark.parametrize("multiplier", [0.5, 1.0])
def test_what_the_cost_counts(multiplier):
  """At equal widths: a cross-stitch network's ``k`` columns cost exactly ``k`` xception encoders plus
  the stitches' multiply-adds (the count is of the program as written, so additive), MMoE's experts
  cost ``num_experts`` encoders plus the gates, MTAN's attention adds to its encoder, which is
  xception's; so ``XceptionStage`` computes the encoder."""
  config = models.default_config("cpu", "xception")
  encoder = _flops(registry.get("xception").make(config, (), multiplier, jnp.float32))
  for k in (1, 3):
    columns = _flops(cross_stitch.before_heads(as_family(config, "cross_stitch"), k, multiplier), "features")
    assert columns == k * encoder + _stitch_flops(config, k, multiplier)
  mmoe_config = as_family(config, "mmoe")
  mixed = _flops(registry.get("mmoe").before_heads(mmoe_config, 2, multiplier), "features")
  assert mmoe_config.num_experts * encoder < mixed < 1.05 * mmoe_config.num_experts * encoder
  mtan = registry.get("mtan").before_heads(as_family(config, "mtan"), 2, multiplier)
  assert _flops(mtan) == pytest.approx(encoder, rel=1e-3)
  assert _flops(mtan, "features") > 1.1 * encoder


def as_family(config, name):
  """Family ``name``'s config with ``config``'s encoder."""
  family_config = models.default_config("cpu", name)
  family_config.update({k: v for k, v in config.items() if k != "name"})
  return family_config


def test_cross_stitch_starts_as_misras_initialisation():
  init = cross_stitch.stitch_init(0.9)
  np.testing.assert_allclose(init(None, (3, 3)), [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
  np.testing.assert_allclose(init(None, (3,), index=2), [0.05, 0.05, 0.9])
  np.testing.assert_allclose(init(None, (1, 1)), [[1.0]])
  config = models.default_config("cpu", "cross_stitch")
  config.self_weight = 1.5
  with pytest.raises(ValueError, match="self_weight must lie in"):
    models.build(config, TASKS)


def test_each_task_set_gets_a_model_of_its_own():
  listed = [networks.parse(n, train_fakes.TOY_TASKS) for n in
            ("toy_depth", "toy_normals", "toy_depth+toy_normals", "toy_depth+toy_normals:pcgrad")]
  shared = networks.cohorts(listed, train_fakes.TOY_TASKS)
  assert [(c.name, len(c.networks)) for c in shared] == [("size_1", 3), ("size_1_pcgrad_toy_depth-toy_normals", 1)]
  separate = networks.cohorts(listed, train_fakes.TOY_TASKS, separate_task_sets=True)
  assert [(c.name, c.tasks) for c in separate] == [
      ("size_1_toy_depth", ("toy_depth",)), ("size_1_toy_normals", ("toy_normals",)),
      ("size_1_toy_depth-toy_normals", ("toy_depth", "toy_normals")),
      ("size_1_pcgrad_toy_depth-toy_normals", ("toy_depth", "toy_normals"))]
  assert all(all(row) for c in separate for row in c.task_mask())



def _learnable_batch(size=8):
  """Images whose labels a 1x1 representation can carry: each image one colour plus a little noise,
  depth its brightness everywhere, the segment its brightest channel everywhere."""
  colours = jax.random.uniform(jax.random.key(1), (size, 1, 1, 3))
  images = colours + 0.05 * jax.random.normal(jax.random.key(2), (size, *IMAGE_SHAPE))
  shape = (size, *IMAGE_SHAPE[:2])
  return {"image": images,
          "toy_depth": jnp.broadcast_to(jnp.mean(colours, axis=-1, keepdims=True), (*shape, 1)) * 4.0,
          "toy_segment": jnp.broadcast_to(jnp.argmax(colours, axis=-1), shape).astype(jnp.int32)}


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_fits_a_batch(name):
  """Gradients reach everything that matters: 40 steps of SGD on one batch of learnable labels at
  least halve each task's training loss (equal weights, training mode, as the trainer's step)."""
  net = models.build(tiny_config(name), TASKS)
  batch = _learnable_batch()
  variables = _init(net, batch["image"])
  optimizer = optax.sgd(0.05, momentum=0.9)

  def losses(params, batch_stats):
    outputs, updates = net.apply({"params": params, "batch_stats": batch_stats}, batch["image"], train=True,
                                 mutable=["batch_stats"])
    return jnp.mean(cohort.task_losses(outputs, batch, TASKS), axis=1), updates["batch_stats"]

  @jax.jit
  def step(params, batch_stats, opt_state):
    def objective(params):
      per_task, new_batch_stats = losses(params, batch_stats)
      return jnp.mean(per_task), (per_task, new_batch_stats)

    (_, (per_task, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, per_task

  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = optimizer.init(params)
  params, batch_stats, opt_state, first = step(params, batch_stats, opt_state)
  for _ in range(40):
    params, batch_stats, opt_state, last = step(params, batch_stats, opt_state)
  assert np.all(np.asarray(last) < 0.5 * np.asarray(first)), (name, first, last)

def test_a_family_as_the_runs_model_trains_in_the_trainer(tmp_path, monkeypatch):
  """``config.model.name`` picks the family for every network of the run: a pair and the pair
  balanced by PCGrad train to the end, are evaluated on each of their tasks, and cost what the
  family's network of two tasks costs. One family stands for all three: none shares one encoder
  across task sets (``models.shares_one_encoder``), so the trainer takes the same path for each;
  MTAN trains in the trainer as a method network in
  ``test_an_architecture_network_trains_beside_the_runs_networks``; every family learns in
  ``test_every_family_fits_a_batch``."""
  name = "cross_stitch"
  assert not any(models.shares_one_encoder(tiny_config(family)) for family in FAMILIES)
  monkeypatch.setattr(train_fakes.FAKE_DATA, "on_step", None)
  config = train_fakes.tiny_config()
  config.tasks = TASKS
  config.model = tiny_config(name)
  config.networks.subsets = ""
  config.networks.half_size_singles = False
  config.networks.extra = ("+".join(TASKS), "+".join(TASKS) + ":pcgrad")
  config.optimizer.learning_rate = 0.1
  summary = trainer.train_and_evaluate(config, str(tmp_path / name))
  records = {n.name: n.to_json() for n in summary["run"].networks}
  assert set(records) == set(config.networks.extra)
  for network, record in records.items():
    assert record["status"] == records_lib.TRAINED, (network, record["status"])
    # Whether they learn is test_every_family_fits_a_batch's: the toy labels are per-pixel, and at 16x16
    # the heads see a 1x1 representation, so no family (nor xception) beats the constant here but by noise.
    improvements = record["improvement_over_constant"]["val"]
    assert set(improvements) == set(network.split(":")[0].split("+")), (network, improvements)
    assert all(np.isfinite(v) for v in improvements.values()), (network, improvements)
    num_tasks = network.count("+") + 1
    assert record["cost"] == pytest.approx(models.encoder_cost(config.model, 1.0, IMAGE_SHAPE, num_tasks))
  with open(os.path.join(tmp_path, name, "results", "methods.json")) as f:
    assert list(json.load(f)) == ["+".join(TASKS) + ":pcgrad"]


def test_a_network_trained_as_an_architecture_is_that_family_on_the_runs_encoder():
  """``<tasks>:mtan`` in a run of the paper's network: the family's model with the run's widths, the
  family's own keys at their defaults, equal task weights (no balancer)."""
  model_config = tiny_config("xception")
  for name in FAMILIES:
    network = networks.parse("+".join(TASKS) + f":{name}", TASKS)
    spec = networks.cohorts([network], TASKS)[0]
    family_config = cohorts_lib.method_model_config(model_config, name)
    assert family_config.name == name and family_config.encoder_widths == model_config.encoder_widths
    assert isinstance(cohorts_lib.build_model(spec, model_config), type(models.build(family_config, TASKS)))
  assert models.as_family(model_config, "mmoe").num_experts == models.default_config("cpu", "mmoe").num_experts


def test_an_architecture_network_needs_the_papers_encoder():
  config = train_fakes.tiny_config()  # the toy model: no xception encoder to build MTAN on
  config.networks.extra = ("toy_depth+toy_normals:mtan",)
  with pytest.raises(ValueError, match="model family 'mtan' is built on xception's encoder.*use model.name 'xception'"):
    config_lib.validate(config)


def test_an_architecture_network_trains_beside_the_runs_networks(tmp_path, monkeypatch):
  """A run of the paper's network trains an ``:mtan`` all-task network beside its equal-weight
  single: it trains to the end, is evaluated on each task, costs MTAN's measured cost and is listed
  in ``methods.json``. MTAN stands for the three: a method network's family only changes the model
  ``cohorts.build_model`` returns (``test_a_network_trained_as_an_architecture_is_that_family_on_the_runs_encoder``
  checks it for each)."""
  monkeypatch.setattr(train_fakes.FAKE_DATA, "on_step", None)
  config = train_fakes.tiny_config()
  config.tasks = TASKS
  config.model = tiny_config("xception")
  # XLA's own convolutions (same results) compile in half the time of the CPU preset's; no balancer
  # here, so no gradient per task, whose vmap grouped convolutions lack.
  config.model.depthwise = "conv"
  config.model.convolution = "xla"
  config.networks.subsets = ""
  config.networks.half_size_singles = False
  pair = "+".join(TASKS)
  method_network = f"{pair}:mtan"
  config.networks.extra = (TASKS[0], method_network)
  config.optimizer.learning_rate = 0.1
  summary = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  records = {n.name: n.to_json() for n in summary["run"].networks}
  record = records[method_network]
  assert record["status"] == records_lib.TRAINED and records[TASKS[0]]["status"] == records_lib.TRAINED
  assert set(record["improvement_over_constant"]["val"]) == set(TASKS)
  assert all(np.isfinite(v) for v in record["improvement_over_constant"]["val"].values()), record
  assert record["cost"] == pytest.approx(
      models.encoder_cost(models.as_family(config.model, "mtan"), 1.0, IMAGE_SHAPE, len(TASKS)))
  with open(os.path.join(tmp_path, "run", "results", "methods.json")) as f:
    assert list(json.load(f)) == [method_network]
