"""MMoE, the Multi-gate Mixture-of-Experts (Ma, Zhao, Yi, Chen, Hong and Chi, KDD 2018), on the paper's encoder.

``num_experts`` experts, each an ``xception`` encoder, shared by all tasks; per task a gate, a softmax
over the experts computed from the input, mixes their representations for that task's head:

    f_t(x) = sum_e g_t(x)[e] * expert_e(x),     g_t(x) = softmax(W_t vec(x))

The gate is linear in the flattened image, as the paper's (on its input features) and LibMTL's
``MMoE`` (on the flattened input). A ``k``-task network at size ``s`` costs ``s``: the experts' widths
are searched so that all experts plus all gates cost ``s`` standard networks.

Shared (``encode``, what balancing methods weigh): the experts. Task-specific (``decode``): the gate
and the head. Cost (``features``): every expert and every gate's mix.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from tg_jax.models import backbone
from tg_jax.models import xception


def default_config(scale: str = "cpu") -> ml_collections.ConfigDict:
  """xception's config (``scale``: ``"cpu"`` or ``"paper"``) named ``mmoe``, plus ``num_experts``."""
  config = backbone.default_config(scale, "mmoe")
  config.num_experts = 3
  return config


class MMoENet(backbone.TaskFeatureNet):
  """Experts ``experts_<e>`` (xception encoders), a gate per task ``gate_<task>`` and the heads.

  Attributes:
    tasks: task names; with ``heads=None`` only labels (the network built to measure its cost).
    encoder: each expert's encoder at this network's widths.
    heads: ``backbone.heads`` (``decoder_<task>`` for each task), or ``None``.
    num_experts: how many experts.
  """

  tasks: tuple[str, ...]
  encoder: backbone.Encoder
  heads: Optional[nn.Module]
  num_experts: int
  dtype: Any = jnp.float32

  def setup(self):
    spec = self.encoder
    self.experts = [xception.XceptionEncoder(spec.widths, spec.middle_blocks, spec.middle_block_reps,
                                             spec.representation_width, spec.depthwise, spec.convolution,
                                             spec.downsampling, self.dtype)
                    for _ in range(self.num_experts)]
    self.gates = {task: nn.Dense(self.num_experts, dtype=self.dtype, name=f"gate_{task}") for task in self.tasks}

  def encode(self, images: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    """Images ``[b, h, w, c]`` -> (the experts' representations ``[experts, b, h/d, w/d, c']``, the
    flattened images ``[b, h * w * c]`` the gates read)."""
    experts = jnp.stack([expert(images, train) for expert in self.experts])
    return experts, images.reshape(images.shape[0], -1)

  def task_features(self, task: str, shared: tuple[jax.Array, jax.Array], train: bool) -> jax.Array:
    """Task ``task``'s head input ``[b, h/d, w/d, c']``: its gate's mix of the experts."""
    del train  # the gates have no batch statistics
    experts, flat_images = shared
    gate = jax.nn.softmax(self.gates[task](flat_images).astype(jnp.float32), axis=-1)  # [b, experts]
    return jnp.einsum("eb...,be->b...", experts, gate.astype(experts.dtype))


def _check(config: ml_collections.ConfigDict) -> None:
  if not isinstance(config.num_experts, int) or config.num_experts < 1:
    raise ValueError(f"model.num_experts must be a positive integer; got {config.num_experts!r}")


def make(config: ml_collections.ConfigDict, tasks: Sequence[str], width_multiplier: float,
         dtype: Any = jnp.float32) -> MMoENet:
  """The MMoE network for ``tasks``, each expert's widths scaled by ``width_multiplier``."""
  _check(config)
  return MMoENet(tuple(tasks), backbone.encoder(config, width_multiplier), backbone.heads(config, tasks, dtype),
                 config.num_experts, dtype)


def before_heads(config: ml_collections.ConfigDict, num_tasks: int, width_multiplier: float) -> MMoENet:
  """A ``num_tasks``-task MMoE network without heads, whose ``features`` FLOPs are its cost."""
  _check(config)
  return MMoENet(backbone.cost_task_names(num_tasks), backbone.encoder(config, width_multiplier), None,
                 config.num_experts)
