"""The paper's encoder-decoder network: a shared Xception-style encoder and one light decoder per task.

Follows the authors' ``xception_taskonomy_small`` (tstandley/taskgrouping), whose full-size encoder
has about 4M parameters:

- Encoder: a 3x3 stride-2 convolution, a 3x3 convolution, three downsampling Xception blocks and
  ``middle_blocks`` blocks at constant width, then a separable convolution to the representation.
  Blocks are residual stacks of separable convolutions (depthwise 3x3 then pointwise 1x1); they
  downsample with a 2x2 stride-2 convolution instead of max pooling. Images ``[b, h, w, c]`` become
  a representation ``[b, h/16, w/16, representation_width]`` (``model.downsampling`` 8: the last
  block keeps its input's size, ``[b, h/8, w/8, ...]``).
- Dense decoder (depth, normals, segmentation, ...): four (three) 2x2 stride-2 transposed
  convolutions interleaved with separable convolutions back to ``[b, h, w, channels]``, plus a
  bilinear skip from the representation concatenated before the last layer.
- Classification decoder (CelebA attributes): global average pooling and one dense layer,
  ``[b, channels]``.

Fractional sizes scale the encoder's widths by one multiplier (``XceptionNet.encoder_widths``); the
representation and decoders keep their widths, so a network's decoders cost the same at every size
and its cost in standard networks is its encoder's.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from tg_jax import tasks as tasks_lib

# The authors initialise every convolution with N(0, 2 / (k * k * out_channels)).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# How many times the encoder shrinks the image side (``model.downsampling``): the paper's 16 halves
# it with the entry convolution and all three blocks; 8 leaves the last block at stride 1, a 4x4
# representation of 32x32 images instead of 2x2. Dense decoders undo it with one 2x transposed
# convolution per entry of ``decoder_widths`` (log2 of it).
PAPER_DOWNSAMPLING = 16
DOWNSAMPLINGS = (8, PAPER_DOWNSAMPLING)
_ENCODER_STAGES = 5  # entry convolution, second convolution, three blocks
# Kernel sizes of the separable convolutions after the first three upsamplings, as the authors'.
_DECODER_KERNEL_SIZES = (3, 5, 5)
# The authors' output layer: a 5x5 separable convolution (``model.output_layer``).
SEPARABLE_OUTPUT = "separable"
DENSE_OUTPUT = "dense"
OUTPUT_LAYERS = (SEPARABLE_OUTPUT, DENSE_OUTPUT)


def default_config(scale: str = "cpu") -> ml_collections.ConfigDict:
  """Widths of the size-1.0 network (one standard network, SNT).

  Args:
    scale: ``"cpu"`` for the CPU preset's network (``tg_jax.training.config.base_config("cpu")``),
      meant to train ~20 networks in about 10 minutes on 2 CPU cores (32x32 images, ~31k encoder
      parameters); ``"paper"`` for the paper's network (256x256 images, ~4M encoder parameters,
      widths of the authors' ``xception_taskonomy_small``).
  """
  config = ml_collections.ConfigDict()
  config.name = "xception"
  if scale == "cpu":
    # Entry convolution, second convolution, three downsampling blocks (the last width is also the
    # middle blocks' width). Narrow and without middle blocks: on 2 CPU cores the step time is the
    # budget, and these networks still beat the constant predictor on every task.
    config.encoder_widths = (8, 16, 24, 32, 48)
    config.middle_blocks = 0
    config.middle_block_reps = 2
    config.representation_width = 32
    # Decoder stage widths from coarse to fine, and the width of the bilinear skip. A dense decoder
    # costs half the encoder's FLOPs (the paper's: a seventh), ~6k parameters.
    config.decoder_widths = (16, 16, 8, 8)
    config.decoder_skip_width = 4
    config.downsampling = PAPER_DOWNSAMPLING
    # The output layer, at full resolution, is where a CPU step spends most of its time with the
    # authors' 5x5 separable convolution (its depthwise part as 25 shifted copies): a dense 3x3
    # convolution (12 channels in, at most 5 out) makes a single-task step ~5x faster.
    config.output_layer = DENSE_OUTPUT
    config.output_kernel_size = 3
    # Resolution at which encoder FLOPs are measured to pick each size's widths (the data's default
    # image size); the ratio of FLOPs barely depends on it.
    config.cost_image_size = 32
    # How depthwise convolutions are computed (same parameters and results): "shifts" is ~6x faster
    # forward+backward than XLA's grouped convolution on CPU.
    config.depthwise = "shifts"
    # Dense convolutions (entry, downsampling, output) as matrix products over shifted copies: the
    # same parameters and results, a third faster per step with these few channels (``PatchConv``).
    config.convolution = PATCHES_CONVOLUTION
  elif scale == "paper":
    config.encoder_widths = (24, 48, 96, 192, 512)
    config.middle_blocks = 4
    config.middle_block_reps = 2
    config.representation_width = 256
    config.decoder_widths = (96, 64, 32, 32)
    config.decoder_skip_width = 16
    config.downsampling = PAPER_DOWNSAMPLING
    config.output_layer = SEPARABLE_OUTPUT
    config.output_kernel_size = 5
    config.cost_image_size = 256
    config.depthwise = "conv"
    config.convolution = XLA_CONVOLUTION
  else:
    raise ValueError(f"unknown model scale {scale!r}; known scales: cpu, paper")
  return config


DEPTHWISE_IMPLEMENTATIONS = ("conv", "shifts")
# How the encoder's dense convolutions and a dense output layer are computed (``model.convolution``).
XLA_CONVOLUTION = "xla"
PATCHES_CONVOLUTION = "patches"
CONVOLUTION_IMPLEMENTATIONS = (XLA_CONVOLUTION, PATCHES_CONVOLUTION)


class PatchConv(nn.Module):
  """``nn.Conv``'s convolution (same ``kernel``/``bias`` parameters, initialisation and padding) as
  one matrix product over ``k * k`` strided, shifted copies of the input stacked on the channel
  axis. With the CPU preset's few channels XLA's CPU convolutions are slow: this cuts a training
  step by about a third there (15 networks at batch 16: 46 -> 32 ms per network-step).
  """

  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: str = "SAME"
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``[b, h, w, c_in] -> [b, h', w', features]``, as ``nn.Conv`` with the same arguments."""
    rows, columns = self.kernel_size
    channels = x.shape[-1]
    kernel = self.param("kernel", _conv_init, (rows, columns, channels, self.features), jnp.float32)
    height, width = x.shape[-3:-1]
    padding = jax.lax.padtype_to_pads((height, width), (rows, columns), (self.strides, self.strides), self.padding)
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    stride = self.strides
    out_height, out_width = (x.shape[1] - rows) // stride + 1, (x.shape[2] - columns) // stride + 1
    patches = jnp.concatenate([x[:, i:i + stride * (out_height - 1) + 1:stride, j:j + stride * (out_width - 1) + 1:stride]
                               for i in range(rows) for j in range(columns)], axis=-1)
    patches, kernel = nn.dtypes.promote_dtype(patches, kernel, dtype=self.dtype)
    y = jnp.einsum("bhwk,kf->bhwf", patches, kernel.reshape(rows * columns * channels, self.features))
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
      y = y + jnp.asarray(bias, y.dtype)
    return y


def conv(implementation: str, features: int, kernel_size: tuple[int, int], *, name: str, strides: int = 1,
          padding: str = "SAME", use_bias: bool = True, dtype: Any = jnp.float32) -> nn.Module:
  """A dense convolution computed as ``implementation`` says; the parameters are the same either way."""
  if implementation == XLA_CONVOLUTION:
    return nn.Conv(features, kernel_size, strides=strides, padding=padding, use_bias=use_bias,
                   kernel_init=_conv_init, dtype=dtype, name=name)
  if implementation == PATCHES_CONVOLUTION:
    return PatchConv(features, kernel_size, strides=strides, padding=padding, use_bias=use_bias, dtype=dtype,
                     name=name)
  raise ValueError(f"unknown model.convolution {implementation!r}; known: {', '.join(CONVOLUTION_IMPLEMENTATIONS)}")


class DepthwiseConv(nn.Module):
  """A ``k x k`` convolution of each channel with its own kernel (stride 1, SAME padding).

  ``implementation`` picks how it is computed, with identical parameters and results:
  ``"conv"`` is XLA's grouped convolution; ``"shifts"`` sums ``k * k`` shifted, scaled copies of the
  input, which XLA fuses into one loop: ~6x faster forward+backward on CPU, where grouped
  convolutions are slow.
  """

  kernel_size: int
  implementation: str = "conv"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``[b, h, w, c] -> [b, h, w, c]``."""
    size, channels = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", _conv_init, (size, size, 1, channels), jnp.float32)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    if self.implementation == "conv":
      return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", feature_group_count=channels,
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.implementation == "shifts":
      height, width = x.shape[-3:-1]
      before, after = (size - 1) // 2, size // 2  # SAME padding, as the convolution pads
      padded = jnp.pad(x, ((0, 0), (before, after), (before, after), (0, 0)))
      return sum(padded[:, i:i + height, j:j + width, :] * kernel[i, j, 0]
                 for i in range(size) for j in range(size))
    raise ValueError(f"unknown depthwise implementation {self.implementation!r}; known: "
                     f"{', '.join(DEPTHWISE_IMPLEMENTATIONS)}")


class SeparableConv(nn.Module):
  """A depthwise ``k x k`` convolution per channel, then a pointwise 1x1 one (Chollet, 2017)."""

  features: int
  kernel_size: int = 3
  use_bias: bool = False
  depthwise: str = "conv"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``[b, h, w, c_in] -> [b, h, w, features]``."""
    x = DepthwiseConv(self.kernel_size, self.depthwise, dtype=self.dtype, name="depthwise")(x)
    # A 1x1 convolution is a matrix product over channels; as one it is ~2x faster on CPU.
    return nn.Dense(self.features, use_bias=self.use_bias, kernel_init=_conv_init, dtype=self.dtype,
                    name="pointwise")(x)


class Upsample2x(nn.Module):
  """A 2x2 stride-2 transposed convolution: each input pixel paints its own 2x2 output block.

  ``out[b, 2i + di, 2j + dj] = x[b, i, j] @ kernel[di, dj] + bias`` (PyTorch's ConvTranspose2d with
  kernel 2, stride 2), computed as one matrix product and a reshape: XLA's transposed convolution
  is ~7x slower forward+backward on CPU.
  """

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``[b, h, w, c] -> [b, 2h, 2w, features]``."""
    batch, height, width, channels = x.shape
    kernel = self.param("kernel", _conv_init, (2, 2, channels, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    blocks = jnp.einsum("bhwc,ijcf->bhwijf", x, kernel) + bias  # [b, h, w, di, dj, features]
    return blocks.transpose(0, 1, 3, 2, 4, 5).reshape(batch, 2 * height, 2 * width, self.features)


def _batch_norm(train: bool, dtype: Any, name: str | None = None) -> nn.BatchNorm:
  # momentum 0.9 is PyTorch's default momentum 0.1, as the authors trained with.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)


class XceptionBlock(nn.Module):
  """``reps`` x (ReLU, separable conv, BN), optionally downsampled 2x, plus a residual connection."""

  features: int
  reps: int
  downsample: bool
  start_with_relu: bool = True
  depthwise: str = "conv"
  convolution: str = XLA_CONVOLUTION
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """``[b, h, w, c] -> [b, h', w', features]`` with ``h' = h / 2`` when downsampling."""
    residual = x
    for rep in range(self.reps):
      if rep > 0 or self.start_with_relu:
        x = nn.relu(x)
      x = SeparableConv(self.features, depthwise=self.depthwise, dtype=self.dtype)(x)
      x = _batch_norm(train, self.dtype)(x)
    strides = 2 if self.downsample else 1
    if self.downsample:
      # The paper replaces Xception's max pooling with a learned 2x2 stride-2 convolution.
      x = conv(self.convolution, self.features, (2, 2), strides=2, padding="VALID", dtype=self.dtype,
                name="downsample")(x)
    if self.downsample or residual.shape[-1] != self.features:
      # A 1x1 convolution with the block's stride: keep every strides-th pixel, then mix channels.
      residual = residual[:, ::strides, ::strides, :]
      residual = nn.Dense(self.features, use_bias=False, kernel_init=_conv_init, dtype=self.dtype,
                          name="skip")(residual)
      residual = _batch_norm(train, self.dtype, name="skip_bn")(residual)
    return x + residual


def check_image_size(height: int, width: int, downsampling: int) -> None:
  """Raises unless the encoder can shrink ``height x width`` images ``downsampling`` times."""
  if height % downsampling or width % downsampling:
    raise ValueError(f"image height and width must be multiples of {downsampling} (the encoder halves them "
                     f"{halvings(downsampling)} times, model.downsampling); got {height}x{width}; resize "
                     f"or crop the images")


def halvings(downsampling: int) -> int:
  """How many times the encoder halves the image side for ``downsampling``: log2 of it, and so the
  number of 2x upsamplings (``decoder_widths`` entries) that undo it."""
  return downsampling.bit_length() - 1


def block_downsamples(block: int, downsampling: int) -> bool:
  """Whether encoder block ``block`` (0 to 2) has stride 2: the entry convolution halves the image
  once, the first ``halvings(downsampling) - 1`` blocks the rest."""
  return block < halvings(downsampling) - 1


class XceptionEncoder(nn.Module):
  """Images ``[b, h, w, c]`` -> representation ``[b, h/d, w/d, representation_width]``, ``d`` =
  ``downsampling``."""

  widths: tuple[int, ...]
  middle_blocks: int
  middle_block_reps: int
  representation_width: int
  depthwise: str = "conv"
  convolution: str = XLA_CONVOLUTION
  downsampling: int = PAPER_DOWNSAMPLING
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> jax.Array:
    check_image_size(*images.shape[-3:-1], self.downsampling)
    entry_width, second_width, *block_widths = self.widths
    x = images.astype(self.dtype)
    # Named as nn.Conv names itself, so both implementations have the same parameter tree.
    x = conv(self.convolution, entry_width, (3, 3), strides=2, use_bias=False, dtype=self.dtype, name="Conv_0")(x)
    x = nn.relu(_batch_norm(train, self.dtype)(x))
    x = conv(self.convolution, second_width, (3, 3), use_bias=False, dtype=self.dtype, name="Conv_1")(x)
    x = nn.relu(_batch_norm(train, self.dtype)(x))
    for index, features in enumerate(block_widths):
      x = XceptionBlock(features, reps=2, downsample=block_downsamples(index, self.downsampling),
                        start_with_relu=index > 0, depthwise=self.depthwise, convolution=self.convolution,
                        dtype=self.dtype)(x, train)
    for _ in range(self.middle_blocks):
      x = XceptionBlock(block_widths[-1], reps=self.middle_block_reps, downsample=False, depthwise=self.depthwise,
                        convolution=self.convolution, dtype=self.dtype)(x, train)
    x = SeparableConv(self.representation_width, depthwise=self.depthwise, dtype=self.dtype)(x)
    return nn.relu(_batch_norm(train, self.dtype)(x))


class DenseDecoder(nn.Module):
  """Representation ``[b, h/d, w/d, c]`` -> per-pixel output ``[b, h, w, channels]`` (float32), where
  ``d = 2 ** len(widths)``: one 2x upsampling per width."""

  channels: int
  widths: tuple[int, ...]
  skip_width: int
  output_layer: str = SEPARABLE_OUTPUT
  output_kernel_size: int = 5
  depthwise: str = "conv"
  convolution: str = XLA_CONVOLUTION
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, representation: jax.Array, train: bool) -> jax.Array:
    batch, height, width, _ = representation.shape
    out_height, out_width = height * 2 ** len(self.widths), width * 2 ** len(self.widths)
    # A cheap path straight from the representation to full resolution, joined before the last layer.
    separable = functools.partial(SeparableConv, depthwise=self.depthwise, dtype=self.dtype)
    skip = separable(self.skip_width, name="skip")(representation)
    skip = _batch_norm(train, self.dtype, name="skip_bn")(skip)
    skip = jax.image.resize(skip, (batch, out_height, out_width, self.skip_width), method="bilinear")

    x = separable(self.widths[0])(representation)
    x = _batch_norm(train, self.dtype)(x)
    for stage, features in enumerate(self.widths):
      x = Upsample2x(features, dtype=self.dtype)(x)
      x = _batch_norm(train, self.dtype)(x)
      if stage < len(_DECODER_KERNEL_SIZES):
        x = nn.relu(x)
        x = separable(features, kernel_size=_DECODER_KERNEL_SIZES[stage])(x)
        x = nn.relu(_batch_norm(train, self.dtype)(x))
    x = nn.relu(jnp.concatenate([x, skip.astype(x.dtype)], axis=-1))
    if self.output_layer == DENSE_OUTPUT:
      size = self.output_kernel_size
      x = conv(self.convolution, self.channels, (size, size), dtype=self.dtype, name="output")(x)
    else:
      x = separable(self.channels, kernel_size=self.output_kernel_size, use_bias=True, name="output")(x)
    return x.astype(jnp.float32)


class ClassificationDecoder(nn.Module):
  """Representation ``[b, h', w', c]`` -> logits ``[b, channels]`` (float32) by pooling + dense."""

  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, representation: jax.Array, train: bool) -> jax.Array:
    del train  # No batch statistics in this head; the argument keeps decoders interchangeable.
    pooled = jnp.mean(representation, axis=(1, 2))
    return nn.Dense(self.channels, dtype=self.dtype, name="output")(pooled).astype(jnp.float32)


class XceptionNet(nn.Module):
  """A shared encoder and one decoder per task; ``__call__`` returns ``{task: output}``.

  Attributes:
    tasks: task names (``tg_jax.tasks``); each gets its own decoder ``decoder_<task>``.
    encoder_widths: the encoder's widths for this network's size (see ``default_config``).
    middle_blocks, middle_block_reps, representation_width, decoder_widths, decoder_skip_width,
      output_layer, output_kernel_size, depthwise, convolution, downsampling: as in ``default_config``.
    dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters and outputs stay float32.
  """

  tasks: tuple[str, ...]
  encoder_widths: tuple[int, ...]
  middle_blocks: int
  middle_block_reps: int
  representation_width: int
  decoder_widths: tuple[int, ...]
  decoder_skip_width: int
  output_layer: str = SEPARABLE_OUTPUT
  output_kernel_size: int = 5
  depthwise: str = "conv"
  convolution: str = XLA_CONVOLUTION
  downsampling: int = PAPER_DOWNSAMPLING
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder = XceptionEncoder(self.encoder_widths, self.middle_blocks, self.middle_block_reps,
                                   self.representation_width, depthwise=self.depthwise,
                                   convolution=self.convolution, downsampling=self.downsampling, dtype=self.dtype)
    decoders = {}
    for name in self.tasks:
      task = tasks_lib.get(name)
      if task.is_dense:
        decoders[name] = DenseDecoder(task.channels, self.decoder_widths, self.decoder_skip_width,
                                      self.output_layer, self.output_kernel_size,
                                      depthwise=self.depthwise, convolution=self.convolution, dtype=self.dtype,
                                      name=f"decoder_{name}")
      else:
        decoders[name] = ClassificationDecoder(task.channels, dtype=self.dtype, name=f"decoder_{name}")
    self.decoders = decoders

  def encode(self, images: jax.Array, train: bool) -> jax.Array:
    """Images ``[b, h, w, c]`` -> shared representation ``[b, h/d, w/d, representation_width]``."""
    return self.encoder(images, train)

  def decode(self, task: str, representation: jax.Array, train: bool) -> jax.Array:
    """Task ``task``'s output from the representation (``encode``'s), as in ``__call__``."""
    return self.decoders[task](representation, train)

  def __call__(self, images: jax.Array, train: bool) -> dict[str, jax.Array]:
    """Images ``[b, h, w, c]`` -> ``{task: [b, h, w, channels]}`` (dense) or ``[b, channels]``."""
    representation = self.encode(images, train)
    return {name: self.decode(name, representation, train) for name in self.tasks}


def checked_downsampling(config: ml_collections.ConfigDict) -> int:
  """``config.downsampling`` (the paper's 16 for configs written before it existed), checked."""
  downsampling = config.get("downsampling", PAPER_DOWNSAMPLING)
  if downsampling not in DOWNSAMPLINGS:
    raise ValueError(f"unknown model.downsampling {downsampling!r}; known: {', '.join(map(str, DOWNSAMPLINGS))} "
                     f"(with one model.decoder_widths entry per halving: 3 for 8, 4 for 16)")
  return downsampling


def make(config: ml_collections.ConfigDict, tasks: Sequence[str], width_multiplier: float,
         dtype: Any = jnp.float32) -> XceptionNet:
  """The network for ``tasks`` with the encoder's widths scaled by ``width_multiplier``.

  Widths are rounded to integers (at least 1); ``tg_jax.models.build`` picks the multiplier that
  makes the encoder's measured FLOPs match a size.
  """
  if len(config.encoder_widths) != _ENCODER_STAGES:
    raise ValueError(f"model.encoder_widths needs {_ENCODER_STAGES} widths (entry convolution, second "
                     f"convolution, three downsampling blocks); got {tuple(config.encoder_widths)}")
  if config.depthwise not in DEPTHWISE_IMPLEMENTATIONS:
    raise ValueError(f"unknown model.depthwise {config.depthwise!r}; known: {', '.join(DEPTHWISE_IMPLEMENTATIONS)}")
  downsampling = checked_downsampling(config)
  if len(config.decoder_widths) != halvings(downsampling):
    raise ValueError(f"model.decoder_widths needs {halvings(downsampling)} widths (one per 2x upsampling, "
                     f"undoing the encoder's {downsampling}x, model.downsampling); got "
                     f"{tuple(config.decoder_widths)}")
  # Model configs written before the output layer was configurable (e.g. in an older workdir's
  # config.json) had the authors' 5x5 separable one.
  output_layer = config.get("output_layer", SEPARABLE_OUTPUT)
  output_kernel_size = config.get("output_kernel_size", 5)
  if output_layer not in OUTPUT_LAYERS:
    raise ValueError(f"unknown model.output_layer {output_layer!r}; known: {', '.join(OUTPUT_LAYERS)}")
  if output_kernel_size < 1:
    raise ValueError(f"model.output_kernel_size must be >= 1, got {output_kernel_size}")
  # Configs from before ``model.convolution`` existed computed convolutions with XLA's.
  convolution = config.get("convolution", XLA_CONVOLUTION)
  if convolution not in CONVOLUTION_IMPLEMENTATIONS:
    raise ValueError(f"unknown model.convolution {convolution!r}; known: {', '.join(CONVOLUTION_IMPLEMENTATIONS)}")
  return XceptionNet(
      tasks=tuple(tasks),
      encoder_widths=tuple(max(1, round(width_multiplier * w)) for w in config.encoder_widths),
      middle_blocks=config.middle_blocks,
      middle_block_reps=config.middle_block_reps,
      representation_width=config.representation_width,
      decoder_widths=tuple(config.decoder_widths),
      decoder_skip_width=config.decoder_skip_width,
      output_layer=output_layer,
      output_kernel_size=output_kernel_size,
      depthwise=config.depthwise,
      convolution=convolution,
      downsampling=downsampling,
      dtype=dtype,
  )
