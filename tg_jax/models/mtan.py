"""MTAN, the Multi-Task Attention Network (Liu, Johns and Davison, CVPR 2019), on the paper's encoder.

One shared encoder (``xception``'s, cut into stages) and, per task, a chain of soft attention modules
that select features from the shared stages 1 to 4 (outputs ``p_1 .. p_4``):

    a_1 = g_1(p_1) * p_1
    a_j = g_j([p_j ; h_j(a_{j-1})]) * p_j        for j = 2, 3, 4

``g_j`` (the mask, in [0, 1] per feature): 1x1 convolution, BN, ReLU, 1x1 convolution, BN, sigmoid,
both at the stage's width. ``h_j`` (the transition to stage ``j``'s width and resolution): a separable
3x3 convolution, BN, ReLU, then 2x2 max pooling where stage ``j`` halves the resolution. ``a_4`` has
the shape of xception's representation and feeds the task's head (``xception``'s decoders).

Two departures from the paper's SegNet/ResNet version (and LibMTL's ``MTAN``), for this encoder: the
mask reads the stage's output, not a feature from inside its block (an Xception block has no natural
midpoint); and every task has its own transitions ``h`` (the official code shares them across tasks,
which would make them shared parameters outside the encoder).

Shared (``encode``, what balancing methods weigh): the encoder. Task-specific (``decode``): the
attention chain and the head. Cost (``features``): the encoder plus every task's attention chain.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from tg_jax.models import backbone
from tg_jax.models import xception

ATTENDED_STAGES = (1, 2, 3, 4)


def default_config(scale: str = "cpu") -> ml_collections.ConfigDict:
  """xception's config (``scale``: ``"cpu"`` or ``"paper"``) named ``mtan``: MTAN adds no options."""
  return backbone.default_config(scale, "mtan")


class AttentionChain(nn.Module):
  """One task's attention modules over the shared stages: ``(p_1, ..., p_4) -> a_4``.

  Attributes:
    widths: the width of each attended stage's output.
  """

  widths: tuple[int, ...]
  depthwise: str = "conv"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, shared: Sequence[jax.Array], train: bool) -> jax.Array:
    attended = None
    for width, stage in zip(self.widths, shared):
      x = stage
      if attended is not None:
        h = xception.SeparableConv(width, depthwise=self.depthwise, dtype=self.dtype)(attended)
        h = nn.relu(backbone.batch_norm(train, self.dtype)(h))
        if h.shape[-3] != stage.shape[-3]:
          h = nn.max_pool(h, (2, 2), strides=(2, 2))
        x = jnp.concatenate([stage, h.astype(stage.dtype)], axis=-1)
      mask = nn.Dense(width, dtype=self.dtype)(x)
      mask = nn.relu(backbone.batch_norm(train, self.dtype)(mask))
      mask = nn.Dense(width, dtype=self.dtype)(mask)
      mask = nn.sigmoid(backbone.batch_norm(train, self.dtype)(mask))
      attended = mask * stage
    return attended


class MTANNet(backbone.TaskFeatureNet):
  """The shared encoder's stages, one ``AttentionChain`` per task (``attention_<task>``) and the heads.

  Attributes:
    tasks: task names; with ``heads=None`` only labels (the network built to measure its cost).
    encoder: the shared encoder at this network's widths.
    heads: ``backbone.heads`` (``decoder_<task>`` for each task), or ``None``.
  """

  tasks: tuple[str, ...]
  encoder: backbone.Encoder
  heads: Optional[nn.Module]
  dtype: Any = jnp.float32

  def setup(self):
    self.stages = backbone.stages(self.encoder, self.dtype)
    widths = backbone.stage_widths(self.encoder)
    self.attention = {task: AttentionChain(tuple(widths[j] for j in ATTENDED_STAGES), self.encoder.depthwise,
                                           self.dtype, name=f"attention_{task}") for task in self.tasks}

  def encode(self, images: jax.Array, train: bool) -> tuple[jax.Array, ...]:
    """Images ``[b, h, w, c]`` -> the shared stages' outputs ``p_1 .. p_4`` (``h/4`` to ``h/d``, ``d`` =
    ``model.downsampling``)."""
    x, outputs = images, []
    for index, stage in enumerate(self.stages):
      x = stage(x, train)
      if index in ATTENDED_STAGES:
        outputs.append(x)
    return tuple(outputs)

  def task_features(self, task: str, shared: tuple[jax.Array, ...], train: bool) -> jax.Array:
    """Task ``task``'s head input ``[b, h/d, w/d, representation_width]``: its attention over ``shared``."""
    return self.attention[task](shared, train)


def make(config: ml_collections.ConfigDict, tasks: Sequence[str], width_multiplier: float,
         dtype: Any = jnp.float32) -> MTANNet:
  """The MTAN network for ``tasks``, its encoder's widths scaled by ``width_multiplier``."""
  return MTANNet(tuple(tasks), backbone.encoder(config, width_multiplier), backbone.heads(config, tasks, dtype), dtype)


def before_heads(config: ml_collections.ConfigDict, num_tasks: int, width_multiplier: float) -> MTANNet:
  """A ``num_tasks``-task MTAN network without heads, whose ``features`` FLOPs are its cost."""
  return MTANNet(backbone.cost_task_names(num_tasks), backbone.encoder(config, width_multiplier), None)
