"""Network cost in standard networks (SNT), measured from the encoder's FLOPs as XLA counts them.

The paper budgets inference in units of one standard network. Here a network of size ``s`` gets the
width multiplier whose encoder's FLOPs, as XLA's cost analysis counts them for the lowered encoder,
are closest to ``s`` times those of one standard network (the size-1.0 encoder). Decoders are left
out: they are the same at every size, one per task.

The count is of the program as written (before XLA's optimisations), not of the compiled one: fusion
recomputes cheap producers inside their consumers (on CPU, a batch norm and ReLU once per shifted
copy of the next ``"shifts"`` depthwise convolution), so the compiled count of one encoder depends on
what surrounds it. Cross-stitch's columns compiled with stitches between their stages counted fewer
FLOPs than the same columns alone; the lowered count is additive: ``k`` columns and their stitches
count exactly ``k`` encoders plus the stitches' multiply-adds.

Families whose tasks do not share one encoder (``ModelFamily.before_heads``: MTAN's task attention,
cross-stitch's columns, MMoE's gates) cost the FLOPs of everything before the task heads, for all of
a network's tasks, in the same unit (``ModelFamily.standard``); their widths are searched per task
count, so a ``k``-task network of size ``s`` costs ``s`` whatever ``k``.

Measured FLOPs are kept in ``tg_jax.cache`` (``encoder_flops.json`` in ``~/.cache/tg_jax``), keyed by
the encoder's module (its class, the source file defining it and every attribute, so its widths), the
image shape and the JAX, jaxlib and Flax versions: a later run's width search reads the numbers instead of compiling the encoders
again, and gets exactly the numbers a new measurement gives (tests check).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import os
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import SingleDeviceSharding

from tg_jax import cache
from tg_jax.models import registry

# The search stops once its bracket is this narrow relative to the multiplier: narrower than any
# rounding step of widths below 5000, so its ends are the two rounded networks nearest the target.
_MULTIPLIER_TOLERANCE = 1e-4
# Below this multiplier every width of a realistic config has rounded to 1: nothing is cheaper.
_SMALLEST_MULTIPLIER = 1e-3
_IMAGE_CHANNELS = 3


def encoder_flops(net: nn.Module, image_shape: tuple[int, ...], method: str = "encode") -> float:
  """FLOPs of ``net.encode`` (or ``net.<method>``) on one image of ``image_shape`` ``(h, w, c)``,
  from XLA's cost analysis of the lowered (unoptimised) program.

  Nothing is run, initialised or compiled: shapes are traced abstractly and lowered for the host CPU,
  so every platform (and so every run of a config) picks the same widths for a size.
  """
  on_cpu = SingleDeviceSharding(jax.devices("cpu")[0])
  images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32, sharding=on_cpu)
  variables = jax.eval_shape(functools.partial(net.init, train=False, method=method),
                             jax.random.key(0), images)
  variables = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=on_cpu),
                           variables)
  encode = jax.jit(functools.partial(net.apply, train=False, method=method))
  return float(encode.lower(variables, images).cost_analysis()["flops"])


def _frozen(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
  return ml_collections.FrozenConfigDict(config)


def _cost_image_shape(config) -> tuple[int, int, int]:
  return (config.cost_image_size, config.cost_image_size, _IMAGE_CHANNELS)


FLOPS_CACHE = "encoder_flops"  # tg_jax.cache's file of measured encoder FLOPs


def flops_cache_key(net: nn.Module, image_shape: tuple[int, ...], method: str = "encode") -> str:
  """What a measurement of ``encoder_flops(net, image_shape, method)`` depends on: the module's class,
  the source files of its package (any edit is a new key: a family's network is built from modules
  in several files, e.g. cross-stitch's columns from ``backbone`` and ``xception``, and this file
  decides how FLOPs are counted), its attributes (``repr`` of an unbound Flax module lists them all),
  the method measured, the image shape, and the JAX, jaxlib and Flax versions."""
  import flax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  cls = type(net)
  package = os.path.dirname(inspect.getfile(cls))
  source = hashlib.sha256()
  for name in sorted(n for n in os.listdir(package) if n.endswith(".py")):
    with open(os.path.join(package, name), "rb") as f:
      source.update(name.encode() + b"\0" + f.read())
  source_hash = source.hexdigest()[:16]
  attributes = " ".join(repr(net).split())
  if method != "encode":  # keys of encoders measured before methods were named stay valid
    attributes += f" method={method}"
  return (f"{cls.__module__}.{cls.__qualname__}@{source_hash} {attributes} image_shape={tuple(image_shape)} "
          f"jax={jax.__version__} jaxlib={jaxlib.__version__} flax={flax.__version__}")


@functools.lru_cache(maxsize=None)
def _module_flops(net: nn.Module, image_shape: tuple[int, ...], method: str = "encode") -> float:
  # Keyed by the module, so multipliers that round to the same widths are measured once, and on disk
  # (tg_jax.cache), so a later run measures none.
  key = flops_cache_key(net, image_shape, method)
  cached = cache.load_json(FLOPS_CACHE).get(key)
  if isinstance(cached, float):
    return cached
  flops = encoder_flops(net, image_shape, method)
  cache.store_json(FLOPS_CACHE, key, flops)
  return flops


def _flops(config: ml_collections.FrozenConfigDict, multiplier: float, image_shape: tuple[int, ...],
           num_tasks: Optional[int] = None) -> float:
  """FLOPs a network costs at ``multiplier``: its shared encoder's, or everything before the heads of
  a ``num_tasks``-task network for families without one shared encoder."""
  family = registry.get(config.name)
  if family.before_heads is None:
    return _module_flops(family.make(config, (), multiplier, jnp.float32), image_shape)
  return _module_flops(family.before_heads(config, num_tasks, multiplier), image_shape, "features")


def _standard_flops(config: ml_collections.FrozenConfigDict, image_shape: tuple[int, ...]) -> float:
  """FLOPs of one standard network (1 SNT) at ``image_shape``."""
  family = registry.get(config.name)
  net = family.standard(config) if family.standard else family.make(config, (), 1.0, jnp.float32)
  return _module_flops(net, image_shape)


def _task_count(config: ml_collections.ConfigDict, num_tasks: Optional[int]) -> Optional[int]:
  """``num_tasks`` where the family's cost depends on it, else ``None`` (one cached search per size)."""
  if registry.get(config.name).before_heads is None:
    return None
  if not num_tasks or num_tasks < 1:
    raise ValueError(f"model {config.name!r} costs more with more tasks (everything before the task heads "
                     f"counts); pass num_tasks, the network's number of tasks (got {num_tasks})")
  return int(num_tasks)


def _check_size(size: float) -> None:
  if not size > 0:
    raise ValueError(f"network size must be positive, in standard-network units (e.g. 0.5); got {size}")


@functools.lru_cache(maxsize=None)
def _search_multiplier(config: ml_collections.FrozenConfigDict, size: float, num_tasks: Optional[int] = None) -> float:
  image_shape = _cost_image_shape(config)
  flops = lambda multiplier: _flops(config, multiplier, image_shape, num_tasks)
  standard = _standard_flops(config, image_shape)
  target = size * standard
  # FLOPs never decrease with the multiplier (each rounded width is monotone in it), vanish as it
  # goes to zero and grow about quadratically. Keep a bracket flops(below) < target <= flops(above).
  below, flops_below = 0.0, 0.0
  above, flops_above = 1.0, flops(1.0)
  while flops_above < target:
    below, flops_below = above, flops_above
    above *= 2.0
    flops_above = flops(above)
  # Regula falsi in the squared multiplier, where FLOPs are nearly linear, with the Illinois rule
  # (halve a bracket end's residual when it survives twice) so both ends keep moving. Multipliers
  # that round to widths already measured are cache hits, so only a handful of encoders are lowered.
  interpolate_below, interpolate_above, last_moved = flops_below, flops_above, None
  while above - below > _MULTIPLIER_TOLERANCE * above:
    if above < _SMALLEST_MULTIPLIER:
      raise ValueError(f"size {size} is below the cheapest network this model config can build "
                       f"({flops_above / standard:.3g} standard networks); use a larger size")
    fraction = (target - interpolate_below) / (interpolate_above - interpolate_below)
    middle = math.sqrt(below**2 + fraction * (above**2 - below**2))
    if not below < middle < above:
      middle = 0.5 * (below + above)
    flops_middle = flops(middle)
    if flops_middle < target:
      below, flops_below, interpolate_below = middle, flops_middle, flops_middle
      if last_moved == "below":
        interpolate_above = target + 0.5 * (interpolate_above - target)
      last_moved = "below"
    else:
      above, flops_above, interpolate_above = middle, flops_middle, flops_middle
      if last_moved == "above":
        interpolate_below = target - 0.5 * (target - interpolate_below)
      last_moved = "above"
  if below == 0.0:
    return above
  return above if flops_above - target <= target - flops_below else below


def width_multiplier(config: ml_collections.ConfigDict, size: float, num_tasks: Optional[int] = None) -> float:
  """The width multiplier whose measured FLOPs are closest to ``size`` standard networks.

  Deterministic; measured at ``config.cost_image_size`` and cached per (config, size, task count).
  ``num_tasks``: the network's number of tasks, needed (and read) only by families whose cost grows
  with it (``ModelFamily.before_heads``).
  """
  _check_size(size)
  count = _task_count(config, num_tasks)
  if size == 1.0 and count is None:
    return 1.0
  return _search_multiplier(_frozen(config), float(size), count)


def encoder_cost(config: ml_collections.ConfigDict, size: float,
                 image_shape: Optional[tuple[int, ...]] = None, num_tasks: Optional[int] = None) -> float:
  """Measured cost in standard networks of a size-``size`` network's encoder (for families without one
  shared encoder: of everything before its ``num_tasks`` task heads).

  Args:
    config: the model config (``config.model``).
    size: the nominal size, e.g. 0.5.
    image_shape: ``(h, w, c)`` of one input image; defaults to ``config.cost_image_size`` square RGB.
    num_tasks: the network's number of tasks, where the family's cost depends on it.

  Returns:
    ``flops(network at size) / flops(standard network)`` from XLA's cost analysis.
  """
  frozen = _frozen(config)
  count = _task_count(config, num_tasks)
  image_shape = tuple(image_shape) if image_shape is not None else _cost_image_shape(config)
  return (_flops(frozen, width_multiplier(config, size, count), image_shape, count)
          / _standard_flops(frozen, image_shape))
