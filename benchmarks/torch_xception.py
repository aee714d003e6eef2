"""A PyTorch port of ``tg_jax.models.xception``, for the PyTorch row of ``benchmarks/train_step.py``.

The same layers, widths and parameters as the Flax ``XceptionNet`` it is made from (``like``), in
PyTorch's usual form, as the authors wrote it (tstandley/taskgrouping): ``nn.Conv2d`` with
``groups=channels`` for depthwise convolutions, ``nn.ConvTranspose2d(2, stride=2)`` for the 2x
upsamplings, 1x1 ``nn.Conv2d`` for pointwise and skip convolutions, ``nn.BatchNorm2d`` with
PyTorch's default momentum 0.1. Tensors are ``[b, c, h, w]``. Losses are ``tg_jax.tasks``'s: L1
for dense regression, cross-entropy for segmentation and classification (no label masks: the
benchmark's synthetic labels have none).

Only the benchmark imports this file, and only when torch is installed; torch is not a dependency
of tg_jax.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from tg_jax import tasks as tasks_lib
from tg_jax.models import xception

# The paper's encoder halves the image side this many times in all (2 ** 4; the reference models the paper network).
_DOWNSAMPLING_FACTOR = xception.PAPER_DOWNSAMPLING
_DECODER_KERNEL_SIZES = xception._DECODER_KERNEL_SIZES  # pylint: disable=protected-access


class SeparableConv(nn.Module):
  """A depthwise ``k x k`` convolution per channel, then a pointwise 1x1 one."""

  def __init__(self, in_channels: int, features: int, kernel_size: int = 3, bias: bool = False):
    super().__init__()
    self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2,
                               groups=in_channels, bias=False)
    self.pointwise = nn.Conv2d(in_channels, features, 1, bias=bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.pointwise(self.depthwise(x))


class XceptionBlock(nn.Module):
  """``reps`` x (ReLU, separable conv, BN), optionally downsampled 2x, plus a residual connection."""

  def __init__(self, in_channels: int, features: int, reps: int, downsample: bool, start_with_relu: bool):
    super().__init__()
    layers = []
    for rep in range(reps):
      if rep > 0 or start_with_relu:
        layers.append(nn.ReLU())  # not in place: the residual keeps the block's input
      layers += [SeparableConv(in_channels if rep == 0 else features, features), nn.BatchNorm2d(features)]
    if downsample:
      layers.append(nn.Conv2d(features, features, 2, stride=2))
    self.body = nn.Sequential(*layers)
    self.skip = None
    if downsample or in_channels != features:
      self.skip = nn.Sequential(nn.Conv2d(in_channels, features, 1, stride=2 if downsample else 1, bias=False),
                                nn.BatchNorm2d(features))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.body(x) + (x if self.skip is None else self.skip(x))


class XceptionEncoder(nn.Module):
  """Images ``[b, 3, h, w]`` -> representation ``[b, representation_width, h/16, w/16]``."""

  def __init__(self, widths: Sequence[int], middle_blocks: int, middle_block_reps: int, representation_width: int):
    super().__init__()
    entry_width, second_width, *block_widths = widths
    layers = [nn.Conv2d(3, entry_width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(entry_width),
              nn.ReLU(inplace=True),
              nn.Conv2d(entry_width, second_width, 3, padding=1, bias=False), nn.BatchNorm2d(second_width),
              nn.ReLU(inplace=True)]
    channels = second_width
    for index, features in enumerate(block_widths):
      layers.append(XceptionBlock(channels, features, reps=2, downsample=True, start_with_relu=index > 0))
      channels = features
    for _ in range(middle_blocks):
      layers.append(XceptionBlock(channels, channels, reps=middle_block_reps, downsample=False,
                                  start_with_relu=True))
    layers += [SeparableConv(channels, representation_width), nn.BatchNorm2d(representation_width),
               nn.ReLU(inplace=True)]
    self.layers = nn.Sequential(*layers)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    return self.layers(images)


class DenseDecoder(nn.Module):
  """Representation ``[b, c, h/16, w/16]`` -> per-pixel output ``[b, channels, h, w]``."""

  def __init__(self, in_channels: int, channels: int, widths: Sequence[int], skip_width: int):
    super().__init__()
    self.skip = nn.Sequential(SeparableConv(in_channels, skip_width), nn.BatchNorm2d(skip_width))
    layers = [SeparableConv(in_channels, widths[0]), nn.BatchNorm2d(widths[0])]
    previous = widths[0]
    for stage, features in enumerate(widths):
      layers += [nn.ConvTranspose2d(previous, features, 2, stride=2), nn.BatchNorm2d(features)]
      if stage < len(_DECODER_KERNEL_SIZES):
        layers += [nn.ReLU(inplace=True), SeparableConv(features, features, _DECODER_KERNEL_SIZES[stage]),
                   nn.BatchNorm2d(features), nn.ReLU(inplace=True)]
      previous = features
    self.body = nn.Sequential(*layers)
    self.output = SeparableConv(previous + skip_width, channels, kernel_size=5, bias=True)

  def forward(self, representation: torch.Tensor) -> torch.Tensor:
    height, width = representation.shape[-2:]
    size = (height * _DOWNSAMPLING_FACTOR, width * _DOWNSAMPLING_FACTOR)
    # align_corners=False is jax.image.resize's bilinear convention (half-pixel centres).
    skip = F.interpolate(self.skip(representation), size=size, mode="bilinear", align_corners=False)
    x = self.body(representation)
    return self.output(F.relu(torch.cat([x, skip.to(x.dtype)], dim=1)))


class ClassificationDecoder(nn.Module):
  """Representation ``[b, c, h', w']`` -> logits ``[b, channels]`` by global average pooling + dense."""

  def __init__(self, in_channels: int, channels: int):
    super().__init__()
    self.output = nn.Linear(in_channels, channels)

  def forward(self, representation: torch.Tensor) -> torch.Tensor:
    return self.output(representation.mean(dim=(2, 3)))


class XceptionNet(nn.Module):
  """A shared encoder and one decoder per task; ``forward`` returns ``{task: output}``."""

  def __init__(self, tasks: Sequence[str], encoder_widths: Sequence[int], middle_blocks: int,
               middle_block_reps: int, representation_width: int, decoder_widths: Sequence[int],
               decoder_skip_width: int):
    super().__init__()
    self.tasks = tuple(tasks)
    self.encoder = XceptionEncoder(encoder_widths, middle_blocks, middle_block_reps, representation_width)
    decoders = {}
    for name in self.tasks:
      task = tasks_lib.get(name)
      decoders[name] = (DenseDecoder(representation_width, task.channels, decoder_widths, decoder_skip_width)
                        if task.is_dense else ClassificationDecoder(representation_width, task.channels))
    self.decoders = nn.ModuleDict(decoders)
    for module in self.modules():
      if isinstance(module, nn.Conv2d):  # the authors' initialisation: N(0, 2 / (k * k * out_channels))
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

  def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
    representation = self.encoder(images)
    return {name: decoder(representation) for name, decoder in self.decoders.items()}


def like(net: xception.XceptionNet) -> XceptionNet:
  """The PyTorch network with ``net``'s tasks and widths (``net`` from ``tg_jax.models.build``)."""
  if net.downsampling != _DOWNSAMPLING_FACTOR:
    raise ValueError(f"the PyTorch reference is the paper's network (model.downsampling {_DOWNSAMPLING_FACTOR}); "
                     f"got {net.downsampling}")
  return XceptionNet(net.tasks, net.encoder_widths, net.middle_blocks, net.middle_block_reps,
                     net.representation_width, net.decoder_widths, net.decoder_skip_width)


def task_loss(task_name: str, output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
  """Batch-mean loss of one task, as ``tg_jax.tasks``: L1 (dense regression) or cross-entropy.

  ``output`` ``[b, channels, h, w]`` (dense) or ``[b, channels]``; ``label`` ``[b, channels, h, w]``
  float (dense regression), ``[b, h, w]`` or ``[b]`` class ids.
  """
  task = tasks_lib.get(task_name)
  output = output.float()  # losses in float32, as tg_jax's, whatever the computation dtype
  if task.kind == tasks_lib.DENSE_REGRESSION:
    return F.l1_loss(output, label)
  return F.cross_entropy(output, label)
