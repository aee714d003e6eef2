"""Loss and gradient balancing for multi-task networks, found by name.

``balancing.get("pcgrad", seed=0)`` returns a ``Balancer`` (``init``, ``update``; see ``base``), so a
config names its method as a string with its options. Methods:

- ``equal``: the unweighted mean of task losses (the paper's default).
- ``uncertainty``: learned homoscedastic uncertainty weights (Kendall et al. 2018).
- ``dwa``: Dynamic Weight Average (Liu et al. 2019).
- ``gradnorm``: GradNorm (Chen et al. 2018).
- ``mgda``: MGDA-UB's minimum-norm combination (Sener & Koltun 2018).
- ``pcgrad``: projecting conflicting gradients (Yu et al. 2020).
- ``cagrad``: conflict-averse gradient descent (Liu et al. 2021).
- ``imtl_g``: impartial gradient weights, IMTL-G (Liu et al. 2021).
"""

from __future__ import annotations

import inspect
from typing import Callable

from tg_jax.balancing.base import Balancer, combine, gram_matrix
from tg_jax.balancing.gradient import cagrad, imtl_g, mgda, min_norm_weights, pcgrad
from tg_jax.balancing.weighting import dwa, equal, gradnorm, uncertainty

_REGISTRY: dict[str, Callable[..., Balancer]] = {
    "equal": equal,
    "uncertainty": uncertainty,
    "dwa": dwa,
    "gradnorm": gradnorm,
    "mgda": mgda,
    "pcgrad": pcgrad,
    "cagrad": cagrad,
    "imtl_g": imtl_g,
}


# Methods whose weights depend on the task losses and their own state only, never on the task
# gradients: a trainer may back-propagate their weighted loss once instead of once per task.
_LOSS_ONLY = frozenset({"equal", "uncertainty", "dwa"})


def names() -> list[str]:
  return sorted(_REGISTRY)


def needs_task_gradients(name: str) -> bool:
  """Whether method ``name``'s weights depend on the task gradients (else only on the losses)."""
  if name not in _REGISTRY:
    raise KeyError(f"unknown balancing method {name!r}; known methods: {', '.join(names())}")
  return name not in _LOSS_ONLY


def get(name: str, **options) -> Balancer:
  """The balancer ``name`` built with ``options``; errors list the known names or options."""
  if name not in _REGISTRY:
    raise KeyError(f"unknown balancing method {name!r}; known methods: {', '.join(names())}")
  factory = _REGISTRY[name]
  accepted = inspect.signature(factory).parameters
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise TypeError(f"balancing method {name!r} has no option(s) {unknown}; its options are: "
                    f"{', '.join(accepted) or 'none'}")
  return factory(**options)


__all__ = ["Balancer", "combine", "get", "gram_matrix", "min_norm_weights", "names", "needs_task_gradients"]
