"""How many networks one call of a cohort's step trains: chunks as large as the config and memory allow.

A cohort's networks are stacked on a leading axis and trained by one compiled step; a cohort larger
than device memory is split into chunks of (nearly) equal size, each its own call of the step.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Optional, Sequence

from absl import logging
import jax
import ml_collections

if TYPE_CHECKING:
  from tg_jax.training import cohorts as cohorts_lib


def balanced_sizes(total: int, limit: int) -> list[int]:
  """``total`` split into ``ceil(total / limit)`` parts differing by at most one (at most 2 compiles)."""
  parts = math.ceil(total / limit)
  return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def tree_bytes(tree: Any) -> int:
  """Bytes of a pytree's arrays (or of their ``ShapeDtypeStruct``s)."""
  # ``leaf.dtype.itemsize`` rather than ``jnp.dtype``: PRNG key dtypes (PCGrad's state) have no numpy dtype.
  return sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def memory_budget(device: jax.Device, fraction: float) -> Optional[int]:
  """Bytes one step may use: ``fraction`` of device memory, or of host memory for CPU devices;
  None where neither is known."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "bytes_limit" in stats:
    return int(fraction * stats["bytes_limit"])
  try:
    return int(fraction * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
  except (ValueError, OSError, AttributeError):
    return None


def plan_chunks(runners: Sequence["cohorts_lib.CohortRunner"], config: ml_collections.ConfigDict, abstract_batch: Any,
                image_shape: Sequence[int], device: jax.Device) -> dict[str, list[int]]:
  """Chunk sizes per cohort name: as large as ``config.max_networks_per_chunk`` and memory allow.

  The memory a step needs is read from XLA's analysis of the compiled step (compiled anyway), plus
  the states of all networks, which stay resident; a chunk that does not fit is halved.
  """
  budget = memory_budget(device, config.memory_fraction)
  resident = sum(tree_bytes(r.abstract_state(len(r.spec.networks), image_shape)) for r in runners)
  plan = {}
  for runner in runners:
    count = len(runner.spec.networks)
    limit = min(count, config.max_networks_per_chunk or count)
    while True:
      sizes = balanced_sizes(count, limit)
      analysis = runner.compiled_step(max(sizes), abstract_batch, image_shape).memory_analysis()
      needed = resident + (analysis.temp_size_in_bytes if analysis is not None else 0)
      if budget is None or needed <= budget or limit == 1:
        break
      logging.info("cohort %s: %d networks per step need ~%.1f GiB of %.1f GiB; halving the chunk",
                   runner.spec.name, limit, needed / 2**30, budget / 2**30)
      limit = math.ceil(limit / 2)
    if budget is not None and needed > budget:
      logging.warning("cohort %s: even one network per step needs ~%.1f GiB, more than the %.1f GiB budget",
                      runner.spec.name, needed / 2**30, budget / 2**30)
    plan[runner.spec.name] = sizes
  return plan
