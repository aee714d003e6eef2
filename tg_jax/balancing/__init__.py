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
- ``imtl_l``: impartial loss scales, IMTL-L, and ``imtl``: the two combined (Liu et al. 2021).
- ``rlw``: random loss weights (Lin et al. 2022).
- ``famo``: fast adaptive multitask optimisation (Liu et al. 2023).
- ``nash_mtl``: the Nash bargaining solution, Nash-MTL (Navon et al. 2022).
- ``aligned_mtl``: aligned principal components of the gradients, Aligned-MTL (Senushkin et al. 2023).
- ``gradvac``: Gradient Vaccine (Wang et al. 2021).
- ``graddrop``: gradient sign dropout, GradDrop (Chen et al. 2020).
- ``db_mtl``: dual-balancing, DB-MTL (Lin et al. 2023).
"""

from __future__ import annotations

import inspect
from typing import Callable

from tg_jax.balancing.base import Balancer, combine, gram_matrix, reseeded
from tg_jax.balancing.gradient import (aligned_mtl, cagrad, gradvac, imtl, imtl_g, mgda, min_norm_weights, nash_mtl,
                                       pcgrad)
from tg_jax.balancing.surgery import db_mtl, graddrop
from tg_jax.balancing.weighting import dwa, equal, famo, gradnorm, imtl_l, rlw, uncertainty

_REGISTRY: dict[str, Callable[..., Balancer]] = {
    "equal": equal,
    "uncertainty": uncertainty,
    "dwa": dwa,
    "gradnorm": gradnorm,
    "mgda": mgda,
    "pcgrad": pcgrad,
    "cagrad": cagrad,
    "imtl_g": imtl_g,
    "imtl_l": imtl_l,
    "imtl": imtl,
    "rlw": rlw,
    "famo": famo,
    "nash_mtl": nash_mtl,
    "aligned_mtl": aligned_mtl,
    "gradvac": gradvac,
    "graddrop": graddrop,
    "db_mtl": db_mtl,
}


# Methods whose weights depend on the task losses and their own state only, never on the task
# gradients: a trainer may back-propagate their weighted loss once instead of once per task.
_LOSS_ONLY = frozenset({"equal", "uncertainty", "dwa", "imtl_l", "rlw", "famo"})
# Methods whose shared update is not sum_i weights[i] g_i (``surgery``): no representation mode.
_NONLINEAR = frozenset({"graddrop", "db_mtl"})


def names() -> list[str]:
  return sorted(_REGISTRY)


def needs_task_gradients(name: str) -> bool:
  """Whether method ``name``'s weights depend on the task gradients (else only on the losses)."""
  if name not in _REGISTRY:
    raise KeyError(f"unknown balancing method {name!r}; known methods: {', '.join(names())}")
  return name not in _LOSS_ONLY


def combines_linearly(name: str) -> bool:
  """Whether method ``name``'s shared update is ``sum_i info["weights"][i] g_i`` (see ``base``)."""
  if name not in _REGISTRY:
    raise KeyError(f"unknown balancing method {name!r}; known methods: {', '.join(names())}")
  return name not in _NONLINEAR


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


__all__ = ["Balancer", "combine", "combines_linearly", "get", "gram_matrix", "min_norm_weights", "names",
           "needs_task_gradients", "reseeded"]
