"""What the multi-task architecture families (MTAN, cross-stitch, MMoE) share, built from ``xception``.

- ``XceptionStage``: the paper's encoder (``xception.XceptionEncoder``) cut into its five stages, so
  an architecture can act between them (MTAN's attention, cross-stitch's mixing). Run in order, the
  stages are exactly the encoder's layers.
- ``TaskFeatureNet``: a family's network is its ``encode`` and ``task_features``; the decoding and
  the forward pass around them are common.
- ``heads``: the task heads, ``xception``'s decoders as its config names them, so every family's heads
  are the paper's and cost the same (heads are not part of a network's cost).
- ``default_config``: a family's config is xception's (its encoder keys describe one standard
  network, ``standard``) plus the family's own keys.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from tg_jax.models import xception

NUM_STAGES = 5  # the entry convolutions, three downsampling blocks (the last with the middle blocks), the representation


def default_config(scale: str, name: str) -> ml_collections.ConfigDict:
  """``xception.default_config(scale)`` renamed ``name``: the family's backbone is that encoder."""
  config = xception.default_config(scale)
  config.name = name
  return config


def standard(config: ml_collections.ConfigDict) -> nn.Module:
  """One standard network (1 SNT): the xception encoder of ``config``'s encoder keys at their widths."""
  return xception.make(config, (), 1.0)


def heads(config: ml_collections.ConfigDict, tasks: Sequence[str], dtype: Any) -> nn.Module:
  """The task heads: an ``xception`` network of which only ``decode`` is ever called, so it holds one
  decoder per task (``decoder_<task>``) and no encoder parameters."""
  return xception.make(config, tasks, 1.0, dtype)


class TaskFeatureNet(nn.Module):
  """A family's network in two parts, both the subclass's: ``encode`` (images -> what the tasks share)
  and ``task_features`` (that -> one task's head input); the subclass also holds ``tasks`` and
  ``heads``. This adds what every family does with them: per-task decoding, the features before the
  heads (what a network costs) and the whole forward pass."""

  def decode(self, task: str, shared: Any, train: bool) -> jax.Array:
    return self.heads.decode(task, self.task_features(task, shared, train), train)

  def features(self, images: jax.Array, train: bool) -> dict[str, jax.Array]:
    """Everything before the heads, for every task: what the network costs."""
    shared = self.encode(images, train)
    return {task: self.task_features(task, shared, train) for task in self.tasks}

  def __call__(self, images: jax.Array, train: bool) -> dict[str, jax.Array]:
    shared = self.encode(images, train)
    return {task: self.decode(task, shared, train) for task in self.tasks}


class Encoder(NamedTuple):
  """An xception encoder's shape (``xception.default_config``'s keys), its widths already scaled."""

  widths: tuple[int, ...]
  middle_blocks: int
  middle_block_reps: int
  representation_width: int
  depthwise: str
  convolution: str = xception.XLA_CONVOLUTION
  downsampling: int = xception.PAPER_DOWNSAMPLING


def encoder(config: ml_collections.ConfigDict, width_multiplier: float) -> Encoder:
  """``config``'s encoder with its widths times ``width_multiplier``, rounded (at least 1), as
  ``xception.make`` scales them."""
  if len(config.encoder_widths) != NUM_STAGES:
    raise ValueError(f"model.encoder_widths needs {NUM_STAGES} widths (entry convolution, second convolution, "
                     f"three downsampling blocks); got {tuple(config.encoder_widths)}")
  if config.depthwise not in xception.DEPTHWISE_IMPLEMENTATIONS:
    raise ValueError(f"unknown model.depthwise {config.depthwise!r}; known: "
                     f"{', '.join(xception.DEPTHWISE_IMPLEMENTATIONS)}")
  # Configs from before ``model.convolution`` existed computed convolutions with XLA's (as ``xception.make``).
  convolution = config.get("convolution", xception.XLA_CONVOLUTION)
  if convolution not in xception.CONVOLUTION_IMPLEMENTATIONS:
    raise ValueError(f"unknown model.convolution {convolution!r}; known: "
                     f"{', '.join(xception.CONVOLUTION_IMPLEMENTATIONS)}")
  return Encoder(tuple(max(1, round(width_multiplier * w)) for w in config.encoder_widths), config.middle_blocks,
                 config.middle_block_reps, config.representation_width, config.depthwise, convolution,
                 xception.checked_downsampling(config))


def batch_norm(train: bool, dtype: Any, name: str | None = None) -> nn.BatchNorm:
  """Batch normalisation with xception's settings (PyTorch's defaults, as the authors trained)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)


def stage_widths(spec: Encoder) -> tuple[int, ...]:
  """The output width of each stage."""
  return (*spec.widths[1:], spec.representation_width)


class XceptionStage(nn.Module):
  """Stage ``index`` (0 to 4) of ``xception.XceptionEncoder``: ``[b, h, w, c] -> [b, h', w', c']``.

  0: the stride-2 entry convolution and the second convolution (``h/2``); 1, 2: a downsampling
  Xception block (``h/4``, ``h/8``); 3: the last block and the middle blocks (``h/16``; ``h/8`` with
  ``downsampling`` 8); 4: the separable convolution to the representation (``representation_width``).
  """

  index: int
  widths: tuple[int, ...]
  middle_blocks: int
  middle_block_reps: int
  representation_width: int
  depthwise: str = "conv"
  convolution: str = xception.XLA_CONVOLUTION
  downsampling: int = xception.PAPER_DOWNSAMPLING
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    entry_width, second_width, *block_widths = self.widths
    block = lambda features, reps, downsample, start_with_relu=True: xception.XceptionBlock(
        features, reps=reps, downsample=downsample, start_with_relu=start_with_relu, depthwise=self.depthwise,
        convolution=self.convolution, dtype=self.dtype)
    if self.index == 0:
      xception.check_image_size(*x.shape[-3:-1], self.downsampling)
      # Named as xception's encoder names them, so a stage's parameters are the encoder's.
      conv = lambda features, strides, name: xception.conv(self.convolution, features, (3, 3), strides=strides,
                                                           use_bias=False, dtype=self.dtype, name=name)
      x = nn.relu(batch_norm(train, self.dtype)(conv(entry_width, 2, "Conv_0")(x.astype(self.dtype))))
      return nn.relu(batch_norm(train, self.dtype)(conv(second_width, 1, "Conv_1")(x)))
    if self.index in (1, 2, 3):
      x = block(block_widths[self.index - 1], 2, xception.block_downsamples(self.index - 1, self.downsampling),
                start_with_relu=self.index > 1)(x, train)
      if self.index == 3:
        for _ in range(self.middle_blocks):
          x = block(block_widths[-1], self.middle_block_reps, False)(x, train)
      return x
    if self.index == 4:
      x = xception.SeparableConv(self.representation_width, depthwise=self.depthwise, dtype=self.dtype)(x)
      return nn.relu(batch_norm(train, self.dtype)(x))
    raise ValueError(f"an xception encoder has stages 0 to {NUM_STAGES - 1}; got stage {self.index}")


def stages(spec: Encoder, dtype: Any) -> list[XceptionStage]:
  """The encoder's five stages, for a module's ``setup``."""
  return [XceptionStage(index, spec.widths, spec.middle_blocks, spec.middle_block_reps, spec.representation_width,
                        depthwise=spec.depthwise, convolution=spec.convolution, downsampling=spec.downsampling,
                        dtype=dtype)
          for index in range(NUM_STAGES)]


def cost_task_names(num_tasks: int) -> tuple[str, ...]:
  """Labels for the branches of a network built without heads to measure its cost (any names do:
  what comes before the heads is the same for every task)."""
  return tuple(f"task_{i}" for i in range(num_tasks))
