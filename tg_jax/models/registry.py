"""Model families by name, so a config names its model as a string (``config.model.name``)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import ml_collections


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """What ``tg_jax.models`` needs from a model family.

  Attributes:
    default_config: ``(scale) -> ConfigDict`` for the size-1.0 network; ``scale`` is ``"cpu"`` or
      ``"paper"``, and the config's ``name`` is the family's registry name.
    make: ``(config, tasks, width_multiplier, dtype) -> module`` whose ``__call__(images, train)``
      returns ``{task: output}``, whose ``encode(images, train)`` returns the representation the
      tasks share and whose ``decode(task, representation, train)`` returns one task's output from it
      (``__call__`` = ``encode`` then every ``decode``); the multiplier scales the shared encoder's widths (1.0: one standard network).
      The parameters ``encode`` uses are what the tasks share (what balancing methods weigh, TAG's
      lookahead moves); every other top-level parameter collection belongs to one task.
    before_heads: for families whose tasks do not share one encoder (MTAN, cross-stitch, MMoE):
      ``(config, num_tasks, width_multiplier) -> module`` whose ``features(images, train)`` computes
      everything before the task heads of a ``num_tasks``-task network, for all its tasks. Its FLOPs
      are such a network's cost, so each task count gets its own widths (``models.cost``) and
      networks of different task sets never share a model (``models.shares_one_encoder``). ``None``:
      the cost is ``make(config, (), multiplier).encode``'s, the same for any tasks.
    standard: ``config -> module`` whose ``encode`` FLOPs are one standard network (1 SNT), the unit
      of every cost; ``None``: ``make(config, (), 1.0)``.
  """

  default_config: Callable[[str], ml_collections.ConfigDict]
  make: Callable[[ml_collections.ConfigDict, Sequence[str], float, Any], nn.Module]
  before_heads: Optional[Callable[[ml_collections.ConfigDict, int, float], nn.Module]] = None
  standard: Optional[Callable[[ml_collections.ConfigDict], nn.Module]] = None


_FAMILIES: dict[str, ModelFamily] = {}


def register(name: str, family: ModelFamily) -> None:
  if name in _FAMILIES and _FAMILIES[name] != family:
    raise ValueError(f"model {name!r} is already registered with a different definition")
  _FAMILIES[name] = family


def get(name: str) -> ModelFamily:
  try:
    return _FAMILIES[name]
  except KeyError:
    raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(_FAMILIES))}") from None


def names() -> list[str]:
  return sorted(_FAMILIES)
