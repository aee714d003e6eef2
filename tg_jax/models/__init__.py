"""Models: a shared encoder plus one decoder per task, sized in standard networks (SNT).

    mcfg = models.default_config()                      # or default_config("paper")
    net = models.build(mcfg, tasks=("depth", "normals"), size=0.5)
    variables = net.init(rng, images, train=False)      # {'params', 'batch_stats'}
    outputs, updates = net.apply(variables, images, train=True, mutable=["batch_stats"])
    models.encoder_cost(mcfg, 0.5)                      # ~0.5, measured from compiled FLOPs

Model families are found by ``config.name`` in a registry (``registry.register``).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from tg_jax.models import registry
from tg_jax.models import xception
from tg_jax.models.cost import encoder_cost, encoder_flops, width_multiplier
from tg_jax.models.registry import ModelFamily, register

register("xception", ModelFamily(default_config=xception.default_config, make=xception.make))


def default_config(scale: str = "cpu", name: str = "xception") -> ml_collections.ConfigDict:
  """The config of model family ``name`` at ``scale`` (``"cpu"`` small default or ``"paper"``)."""
  return registry.get(name).default_config(scale)


def build(config: ml_collections.ConfigDict, tasks: Sequence[str], size: float = 1.0,
          dtype: Any = jnp.float32) -> nn.Module:
  """A network for ``tasks`` whose encoder costs ``size`` standard networks (measured FLOPs).

  Args:
    config: the model config (``config.model``); ``config.name`` picks the family.
    tasks: task names from ``tg_jax.tasks``; one decoder each.
    size: cost in standard networks, e.g. 1.0, 0.5, or the paper's 0.2, 0.3, 0.4, 0.8.
    dtype: computation dtype (``jnp.bfloat16`` on accelerators); parameters stay float32.
  """
  tasks = tuple(tasks)
  if not tasks:
    raise ValueError("a network needs at least one task; got tasks=()")
  if len(set(tasks)) != len(tasks):
    raise ValueError(f"tasks must be distinct; got {tasks}")
  return registry.get(config.name).make(config, tasks, width_multiplier(config, size), dtype)


__all__ = ["ModelFamily", "build", "default_config", "encoder_cost", "encoder_flops", "register",
           "width_multiplier"]
