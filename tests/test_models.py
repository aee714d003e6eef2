"""Tests for tg_jax.models: output shapes, measured sizes, bfloat16, vmapping over networks."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tg_jax import models
from tg_jax import tasks as tasks_lib
from tg_jax.models import cost
from tg_jax.models import xception

# One task of each kind, registered only while these tests run so the tests do not depend on (or
# add to) the project's task list.
DEPTH, NORMALS, SEGMENT, ATTRIBUTE = "model_test_depth", "model_test_normals", "model_test_segment", "model_test_attribute"
_TEST_TASKS = (
    tasks_lib.Task(DEPTH, tasks_lib.DENSE_REGRESSION, 1, tasks_lib.l1_loss, tasks_lib.l1_loss, "L1", True),
    tasks_lib.Task(NORMALS, tasks_lib.DENSE_REGRESSION, 3, tasks_lib.l1_loss, tasks_lib.l1_loss, "L1", True),
    tasks_lib.Task(SEGMENT, tasks_lib.SEGMENTATION, 5, tasks_lib.cross_entropy_loss, tasks_lib.error_rate,
                   "error", False),
    tasks_lib.Task(ATTRIBUTE, tasks_lib.CLASSIFICATION, 2, tasks_lib.cross_entropy_loss, tasks_lib.error_rate,
                   "error", False),
)
ALL_TASKS = tuple(task.name for task in _TEST_TASKS)
SIZES = (0.2, 0.3, 0.4, 0.5, 0.8, 1.0)
IMAGE_SHAPE = (32, 32, 3)


@pytest.fixture(scope="module", autouse=True)
def test_tasks():
  with pytest.MonkeyPatch.context() as patch:
    for task in _TEST_TASKS:
      patch.setitem(tasks_lib._REGISTRY, task.name, task)
    yield


@pytest.fixture(scope="module")
def config():
  return models.default_config()


def _images(batch, image_shape=IMAGE_SHAPE, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, *image_shape))


# Initialisation runs once, so compile it without optimisation: 10x faster to compile on CPU.
_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def _init(net, images):
  init = jax.jit(functools.partial(net.init, train=False), compiler_options=_INIT_COMPILER_OPTIONS)
  return init(jax.random.key(0), images)


def _train_apply(net, variables, images):
  """Outputs and batch-statistics updates of a training-mode forward pass."""
  return jax.jit(functools.partial(net.apply, train=True, mutable=["batch_stats"]))(variables, images)


def _param_count(tree):
  return sum(leaf.size for leaf in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def all_task_net(config):
  """A half-size network with one task of each kind, its images and initial variables."""
  net = models.build(config, ALL_TASKS, size=0.5)
  images = _images(2, (32, 48, 3))  # non-square: dense outputs must come back at input resolution
  return net, images, _init(net, images)


def test_output_shapes_and_dtypes_per_task_kind(all_task_net):
  net, images, variables = all_task_net
  assert set(variables) == {"params", "batch_stats"}
  assert set(variables["params"]) == {"encoder"} | {f"decoder_{name}" for name in ALL_TASKS}
  outputs, updates = _train_apply(net, variables, images)
  expected = {DEPTH: (2, 32, 48, 1), NORMALS: (2, 32, 48, 3), SEGMENT: (2, 32, 48, 5), ATTRIBUTE: (2, 2)}
  assert {name: out.shape for name, out in outputs.items()} == expected
  for name, out in outputs.items():
    assert out.dtype == jnp.float32, name
    assert np.all(np.isfinite(out)), name
  # Training mode updates the running statistics; evaluation mode uses them and changes nothing.
  changed = jax.tree.map(lambda old, new: bool(jnp.any(old != new)), variables["batch_stats"],
                         updates["batch_stats"])
  assert all(jax.tree.leaves(changed))
  eval_outputs = jax.jit(functools.partial(net.apply, train=False))({**variables, **updates}, images)
  assert eval_outputs[DEPTH].shape == expected[DEPTH]


def test_every_parameter_gets_a_gradient(all_task_net):
  net, images, variables = all_task_net

  def loss(params):
    outputs, _ = net.apply({**variables, "params": params}, images, train=True, mutable=["batch_stats"])
    return sum(jnp.mean(jnp.square(out)) for out in outputs.values())

  grads = jax.jit(jax.grad(loss))(variables["params"])
  zero = [jax.tree_util.keystr(path) for path, grad in jax.tree_util.tree_leaves_with_path(grads)
          if not np.any(grad)]
  assert not zero, f"parameters with no gradient: {zero}"


@pytest.mark.parametrize("size", SIZES)
def test_measured_cost_matches_nominal_size(config, size):
  measured = models.encoder_cost(config, size)
  assert measured == pytest.approx(size, rel=0.03)


def test_widths_grow_with_size_and_search_is_deterministic(config):
  widths = [models.build(config, (DEPTH,), size).encoder_widths for size in SIZES]
  for smaller, larger in zip(widths, widths[1:]):
    assert all(a <= b for a, b in zip(smaller, larger)) and smaller != larger, widths
  assert widths[-1] == tuple(config.encoder_widths)
  first = [models.width_multiplier(config, size) for size in SIZES]
  cost._search_multiplier.cache_clear()
  assert [models.width_multiplier(config, size) for size in SIZES] == first


def test_encoder_cost_is_independent_of_the_number_of_tasks(config):
  one_task = models.build(config, (DEPTH,), size=0.5)
  all_tasks = models.build(config, ALL_TASKS, size=0.5)
  assert one_task.encoder_widths == all_tasks.encoder_widths
  assert models.encoder_flops(one_task, IMAGE_SHAPE) == models.encoder_flops(all_tasks, IMAGE_SHAPE)

  def network_flops(net):
    images = jax.ShapeDtypeStruct((1, *IMAGE_SHAPE), jnp.float32)
    variables = jax.eval_shape(functools.partial(net.init, train=False), jax.random.key(0), images)
    apply = jax.jit(functools.partial(net.apply, train=False))
    return apply.lower(variables, images).cost_analysis()["flops"]  # counted as models.encoder_flops counts

  # The whole network does grow with its decoders, so the equality above is not vacuous.
  assert network_flops(all_tasks) > network_flops(one_task) > models.encoder_flops(one_task, IMAGE_SHAPE)


def test_cost_ratio_barely_depends_on_resolution(config):
  at_calibration = models.encoder_cost(config, 0.5)
  at_larger_images = models.encoder_cost(config, 0.5, image_shape=(64, 96, 3))
  assert at_larger_images == pytest.approx(at_calibration, rel=0.02)


def test_bfloat16_computes_in_bfloat16_with_float32_parameters(config, all_task_net):
  net32, images, variables = all_task_net
  net16 = models.build(config, ALL_TASKS, size=0.5, dtype=jnp.bfloat16)
  # Parameters stay float32 whatever the computation dtype, so both networks share these variables.
  shapes16 = jax.eval_shape(functools.partial(net16.init, train=False), jax.random.key(0), images)
  assert shapes16 == jax.eval_shape(functools.partial(net32.init, train=False), jax.random.key(0), images)
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes16)} == {jnp.dtype(jnp.float32)}
  encode = jax.jit(functools.partial(net16.apply, train=False, method="encode"))
  assert encode(variables, images).dtype == jnp.bfloat16
  outputs16, _ = _train_apply(net16, variables, images)
  outputs32, _ = _train_apply(net32, variables, images)
  for name in ALL_TASKS:
    assert outputs16[name].dtype == jnp.float32
    assert np.all(np.isfinite(outputs16[name]))
    scale = float(jnp.std(outputs32[name])) + 1e-6
    assert float(jnp.mean(jnp.abs(outputs16[name] - outputs32[name]))) < 0.1 * scale, name


def test_init_and_apply_vmap_over_a_leading_network_axis(config):
  networks, batch = 3, 2
  net = models.build(config, (DEPTH, ATTRIBUTE), size=0.5)
  rngs = jax.random.split(jax.random.key(0), networks)
  init = jax.jit(jax.vmap(lambda rng: net.init(rng, _images(batch), train=False)),
                 compiler_options=_INIT_COMPILER_OPTIONS)
  variables = init(rngs)
  for leaf in jax.tree.leaves(variables):
    assert leaf.shape[0] == networks
  kernel = variables["params"]["encoder"]["Conv_0"]["kernel"]
  assert not np.allclose(kernel[0], kernel[1]), "networks got the same initialisation"

  images = jnp.stack([_images(batch, seed=seed) for seed in range(networks)])  # [nets, b, h, w, c]
  step = jax.jit(jax.vmap(lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"])))
  outputs, updates = step(variables, images)
  assert outputs[DEPTH].shape == (networks, batch, *IMAGE_SHAPE[:2], 1)
  assert outputs[ATTRIBUTE].shape == (networks, batch, 2)
  # Each network in the stack computes exactly what it computes alone.
  variables_1 = jax.tree.map(lambda leaf: leaf[1], variables)
  alone, alone_updates = _train_apply(net, variables_1, images[1])
  np.testing.assert_allclose(outputs[DEPTH][1], alone[DEPTH], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(outputs[ATTRIBUTE][1], alone[ATTRIBUTE], rtol=1e-4, atol=1e-4)
  jax.tree.map(lambda stacked, single: np.testing.assert_allclose(stacked[1], single, rtol=1e-4, atol=1e-5),
               updates, alone_updates)


@pytest.mark.parametrize("kernel_size", (3, 5))
def test_depthwise_implementations_agree(kernel_size):
  images = _images(2, (8, 12, 6))
  convs = {name: xception.DepthwiseConv(kernel_size, name) for name in xception.DEPTHWISE_IMPLEMENTATIONS}
  variables = convs["conv"].init(jax.random.key(0), images)

  @functools.partial(jax.jit, static_argnums=2)
  def outputs_and_gradients(variables, images, conv):
    loss = lambda variables, images: jnp.sum(jnp.sin(conv.apply(variables, images)))
    return conv.apply(variables, images), jax.grad(loss, argnums=(0, 1))(variables, images)

  reference_outputs, reference = outputs_and_gradients(variables, images, convs["conv"])
  for name, conv in convs.items():
    outputs, gradients = outputs_and_gradients(variables, images, conv)
    np.testing.assert_allclose(outputs, reference_outputs, rtol=1e-5, atol=1e-5, err_msg=name)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-4), gradients, reference)



@pytest.mark.parametrize("kernel_size,strides,padding,use_bias", [
    ((3, 3), 2, "SAME", False), ((3, 3), 1, "SAME", True), ((2, 2), 2, "VALID", False), ((5, 5), 1, "SAME", True)])
def test_patch_convolution_is_xla_convolution(kernel_size, strides, padding, use_bias):
  """Same parameters from the same key, same outputs and gradients (float32 sums reordered)."""
  images = _images(2, (12, 12, 5))
  conv = nn.Conv(7, kernel_size, strides=strides, padding=padding, use_bias=use_bias,
                 kernel_init=xception._conv_init)  # pylint: disable=protected-access
  patch = xception.PatchConv(7, kernel_size, strides=strides, padding=padding, use_bias=use_bias)
  variables = conv.init(jax.random.key(0), images)
  jax.tree.map(np.testing.assert_array_equal, patch.init(jax.random.key(0), images), variables)
  if use_bias:
    variables = {"params": {**variables["params"], "bias": jnp.arange(7.0)}}
  loss = lambda module: lambda variables, images: jnp.sum(jnp.sin(module.apply(variables, images)))
  np.testing.assert_allclose(patch.apply(variables, images), conv.apply(variables, images), rtol=1e-5, atol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-4),
               jax.grad(loss(patch), argnums=(0, 1))(variables, images),
               jax.grad(loss(conv), argnums=(0, 1))(variables, images))


def test_convolution_implementations_build_the_same_network(config):
  """``model.convolution`` changes how the network computes, never its parameters or outputs."""
  nets = {}
  for implementation in xception.CONVOLUTION_IMPLEMENTATIONS:
    variant = config.copy_and_resolve_references()
    variant.convolution, variant.output_layer = implementation, "dense"
    nets[implementation] = models.build(variant, (DEPTH, SEGMENT))
  images = _images(2)
  variables = nets["xla"].init(jax.random.key(0), images, train=False)
  jax.tree.map(np.testing.assert_array_equal, nets["patches"].init(jax.random.key(0), images, train=False), variables)
  outputs = {name: net.apply(variables, images, train=False) for name, net in nets.items()}
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-4), outputs["patches"], outputs["xla"])

def test_upsample_paints_one_2x2_block_per_input_pixel():
  images = _images(1, (2, 3, 4))
  upsample = xception.Upsample2x(5)
  variables = upsample.init(jax.random.key(0), images)
  variables = {"params": {**variables["params"], "bias": jnp.arange(5.0)}}
  kernel = np.asarray(variables["params"]["kernel"])
  expected = np.zeros((1, 4, 6, 5), np.float32)
  for i, j, di, dj in np.ndindex(2, 3, 2, 2):  # PyTorch's ConvTranspose2d(kernel_size=2, stride=2)
    expected[0, 2 * i + di, 2 * j + dj] = np.asarray(images)[0, i, j] @ kernel[di, dj] + np.arange(5.0)
  np.testing.assert_allclose(upsample.apply(variables, images), expected, rtol=1e-5, atol=1e-5)


def test_parameter_budgets_of_the_two_scales():
  def encoder_and_decoder_params(config, image_size):
    net = models.build(config, (DEPTH,), size=1.0)
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    params = jax.eval_shape(functools.partial(net.init, train=False), jax.random.key(0), images)["params"]
    return _param_count(params["encoder"]), _param_count(params[f"decoder_{DEPTH}"])

  cpu_encoder, cpu_decoder = encoder_and_decoder_params(models.default_config("cpu"), 64)
  assert 25_000 <= cpu_encoder + cpu_decoder <= 50_000  # the CPU preset's ~31k-parameter encoder
  paper_encoder, paper_decoder = encoder_and_decoder_params(models.default_config("paper"), 256)
  assert 3_500_000 <= paper_encoder <= 4_500_000  # the paper's ~4M-parameter encoder
  assert paper_decoder < paper_encoder / 10  # decoders are light


def test_errors_name_the_problem(config):
  with pytest.raises(KeyError, match="unknown task 'dept'; known tasks:"):
    models.build(config, ("dept",)).init(jax.random.key(0), _images(1), train=False)
  with pytest.raises(ValueError, match="multiples of 16"):
    models.build(config, (DEPTH,)).init(jax.random.key(0), _images(1, (30, 32, 3)), train=False)
  with pytest.raises(ValueError, match="size must be positive"):
    models.build(config, (DEPTH,), size=0.0)
  with pytest.raises(ValueError, match="at least one task"):
    models.build(config, ())
  with pytest.raises(ValueError, match="distinct"):
    models.build(config, (DEPTH, DEPTH))
  with pytest.raises(ValueError, match="cheapest network"):
    models.width_multiplier(config, 1e-6)
  # Other tests may register models of their own (tests/train_fakes.py), so only xception is certain.
  with pytest.raises(KeyError, match=r"unknown model 'resnet'; known models: (.*, )?xception"):
    models.default_config(name="resnet")
  with pytest.raises(ValueError, match="unknown model scale 'gpu'"):
    models.default_config("gpu")
  bad = models.default_config()
  bad.depthwise = "fft"
  with pytest.raises(ValueError, match="unknown model.depthwise 'fft'; known: conv, shifts"):
    models.build(bad, (DEPTH,))
  bad = models.default_config()
  bad.decoder_widths = (32, 16)
  with pytest.raises(ValueError, match="decoder_widths needs 4 widths"):
    models.build(bad, (DEPTH,))
  bad = models.default_config()
  bad.downsampling = 8
  with pytest.raises(ValueError, match="decoder_widths needs 3 widths .* undoing the encoder's 8x"):
    models.build(bad, (DEPTH,))
  for key, value, message in (("output_layer", "fft", "unknown model.output_layer 'fft'; known: separable, dense"),
                              ("downsampling", 4, "unknown model.downsampling 4; known: 8, 16"),
                              ("output_kernel_size", 0, "output_kernel_size must be >= 1"),
                              ("convolution", "fft", "unknown model.convolution 'fft'; known: xla, patches")):
    bad = models.default_config()
    bad[key] = value
    with pytest.raises(ValueError, match=message):
      models.build(bad, (DEPTH,))


@pytest.mark.parametrize("output_layer,kernel_size", [("separable", 5), ("dense", 3), ("dense", 1)])
def test_output_layers_keep_the_output_shape(config, output_layer, kernel_size):
  variant = config.copy_and_resolve_references()
  variant.output_layer, variant.output_kernel_size = output_layer, kernel_size
  net = models.build(variant, (NORMALS,))
  variables = net.init(jax.random.key(0), _images(2), train=False)
  assert net.apply(variables, _images(2), train=False)[NORMALS].shape == (2, *IMAGE_SHAPE[:2], 3)
  output = variables["params"][f"decoder_{NORMALS}"]["output"]
  kernel = output["kernel"] if output_layer == "dense" else output["depthwise"]["kernel"]
  assert kernel.shape[:2] == (kernel_size, kernel_size)


def test_a_model_config_without_the_output_layer_builds_the_authors_one(config):
  """Workdirs written before the option existed hold model configs without it."""
  legacy = config.copy_and_resolve_references()
  del legacy["output_layer"], legacy["output_kernel_size"], legacy["convolution"]
  net = models.build(legacy, (DEPTH,))
  assert (net.output_layer, net.output_kernel_size, net.convolution) == ("separable", 5, "xla")


@pytest.mark.parametrize("family", ["xception", "mtan", "cross_stitch", "mmoe"])
def test_downsampling_8_keeps_a_4x4_representation_of_32x32_images(family):
  """``model.downsampling`` 8: the last encoder block keeps stride 1 and three upsamplings undo the
  rest, in every family built on the xception encoder; images must be multiples of 8."""
  config = models.default_config(name=family)
  config.downsampling, config.decoder_widths = 8, (16, 8, 8)
  net = models.build(config, (DEPTH, SEGMENT), 1.0)
  images = jnp.zeros((2, *IMAGE_SHAPE))
  variables = net.init(jax.random.PRNGKey(0), images, train=False)
  outputs = net.apply(variables, images, train=False)
  assert outputs[DEPTH].shape == (2, 32, 32, 1) and outputs[SEGMENT].shape == (2, 32, 32, 5)
  if family == "xception":
    representation = net.apply(variables, images, train=False, method=net.encode)
    assert representation.shape == (2, 4, 4, config.representation_width)
    # The paper's 16x: a 2x2 representation.
    paper = models.default_config()
    paper.decoder_widths = (16, 16, 8, 8)
    paper_net = models.build(paper, (DEPTH, SEGMENT), 1.0)
    paper_variables = paper_net.init(jax.random.PRNGKey(0), images, train=False)
    assert paper_net.apply(paper_variables, images, train=False, method=paper_net.encode).shape[1:3] == (2, 2)
  with pytest.raises(ValueError, match="multiples of 8"):
    net.init(jax.random.PRNGKey(0), jnp.zeros((1, 36, 36, 3)), train=False)
