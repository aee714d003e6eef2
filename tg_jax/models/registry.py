"""Model families by name, so a config names its model as a string (``config.model.name``)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

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
  """

  default_config: Callable[[str], ml_collections.ConfigDict]
  make: Callable[[ml_collections.ConfigDict, Sequence[str], float, Any], nn.Module]


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
