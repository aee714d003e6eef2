"""Models: a shared encoder plus one decoder per task, sized in standard networks (SNT).

    mcfg = models.default_config()                      # or default_config("paper")
    net = models.build(mcfg, tasks=("depth", "normals"), size=0.5)
    variables = net.init(rng, images, train=False)      # {'params', 'batch_stats'}
    outputs, updates = net.apply(variables, images, train=True, mutable=["batch_stats"])
    models.encoder_cost(mcfg, 0.5)                      # ~0.5, measured from XLA's FLOP count

Model families are found by ``config.name`` in a registry (``registry.register``): ``xception`` (the
paper's hard sharing), ``mtan`` (task attention over a shared encoder), ``cross_stitch`` (one column
per task, mixed between stages) and ``mmoe`` (task gates over shared experts).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from tg_jax.models import backbone
from tg_jax.models import cross_stitch
from tg_jax.models import mmoe
from tg_jax.models import mtan
from tg_jax.models import registry
from tg_jax.models import xception
from tg_jax.models.cost import encoder_cost, encoder_flops, width_multiplier
from tg_jax.models.registry import ModelFamily, register, names

register("xception", ModelFamily(default_config=xception.default_config, make=xception.make))
for _module in (mtan, cross_stitch, mmoe):
  register(_module.__name__.rsplit(".", 1)[-1], ModelFamily(
      default_config=_module.default_config, make=_module.make, before_heads=_module.before_heads,
      standard=backbone.standard))


def default_config(scale: str = "cpu", name: str = "xception") -> ml_collections.ConfigDict:
  """The config of model family ``name`` at ``scale`` (``"cpu"`` small default or ``"paper"``)."""
  return registry.get(name).default_config(scale)


def as_family(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Family ``name``'s config with ``config``'s values for every key the two share (the encoder's and
  decoders' widths: ``xception``'s keys), the family's defaults for its own keys (e.g. MMoE's
  ``num_experts``), so an architecture is compared with the run's network on the same backbone."""
  family = registry.get(name).default_config("cpu")
  missing = [k for k in xception.default_config("cpu") if k not in config]
  if missing:
    raise ValueError(f"model family {name!r} is built on xception's encoder; model {config.get('name')!r} lacks "
                     f"its keys {', '.join(missing)}: use model.name 'xception' for networks trained as {name!r}")
  family.update({k: v for k, v in config.items() if k in family and k != "name"})
  return family


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
  return registry.get(config.name).make(config, tasks, width_multiplier(config, size, len(tasks)), dtype)


def shares_one_encoder(config: ml_collections.ConfigDict) -> bool:
  """Whether the family's tasks share one encoder whose cost is the same for any tasks (``xception``):
  then networks of one size can train as one model over their task union, each masked to its own
  tasks. Otherwise (``ModelFamily.before_heads``) a network's widths depend on its number of tasks
  and, for cross-stitch, every column feeds every task, so each task set needs a model of its own."""
  return registry.get(config.name).before_heads is None


__all__ = ["ModelFamily", "as_family", "build", "default_config", "encoder_cost", "encoder_flops", "names", "register",
           "shares_one_encoder", "width_multiplier"]
