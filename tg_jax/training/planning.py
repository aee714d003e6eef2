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


# XLA's CPU compiler maps about three memory regions per compiled kernel (code, constants, data), so a
# cohort's programs take thousands of the regions a Linux process may map (``vm.max_map_count``,
# 65,530 by default); past the limit LLVM cannot allocate and the process dies with a segfault.
# The training step is about 60% of a cohort's regions, initialisation and evaluation the rest
# (measured on the CPU demo: ~6,800 for its two cohorts' steps, ~10,000 with everything).
_REGIONS_PER_STEP_REGION = 1.6
_MAP_LIMIT_FILE = "/proc/sys/vm/max_map_count"
_MAPS_FILE = "/proc/self/maps"


class MappingLimitError(RuntimeError):
  """The run's compiled programs would need more memory mappings than the kernel allows a process."""


def mapped_regions() -> Optional[int]:
  """How many memory regions this process maps (None where ``/proc`` does not say)."""
  try:
    with open(_MAPS_FILE, "rb") as f:
      return sum(1 for _ in f)
  except OSError:
    return None


def mapping_limit() -> Optional[int]:
  """The kernel's limit on a process's memory regions (None where ``/proc`` does not say)."""
  try:
    with open(_MAP_LIMIT_FILE) as f:
      return int(f.read())
  except (OSError, ValueError):
    return None


def check_mappings(before: Optional[int], now: Optional[int], limit: Optional[int], planned: int,
                   total: int) -> None:
  """Raises ``MappingLimitError`` when ``total`` cohorts' programs would map more than 90% of ``limit``
  regions, projected from the ``now - before`` regions the first ``planned`` cohorts' steps mapped."""
  if before is None or now is None or limit is None or planned == 0:
    return
  projected = before + (now - before) / planned * total * _REGIONS_PER_STEP_REGION
  if projected > 0.9 * limit:
    raise MappingLimitError(
        f"this run's {total} cohorts would map about {projected:,.0f} memory regions (XLA's CPU compiler maps "
        f"~3 per compiled kernel; the steps of the first {planned} mapped {now - before:,}), more than the "
        f"{limit:,} a process may map (vm.max_map_count); past it the compiler crashes. Raise the limit, e.g. "
        f"sudo sysctl -w vm.max_map_count={max(4 * limit, 262144)}, or train fewer cohorts per process "
        f"(--num_shards=N --shard_index=i, then python -m tg_jax.merge)")


def plan_chunks(runners: Sequence["cohorts_lib.CohortRunner"], config: ml_collections.ConfigDict, abstract_batch: Any,
                image_shape: Sequence[int], device: jax.Device) -> dict[str, list[int]]:
  """Chunk sizes per cohort name: as large as ``config.max_networks_per_chunk`` and memory allow.

  The memory a step needs is read from XLA's analysis of the compiled step (compiled anyway), plus
  the states of all networks, which stay resident; a chunk that does not fit is halved.
  """
  budget = memory_budget(device, config.memory_fraction)
  resident = sum(tree_bytes(r.abstract_state(len(r.spec.networks), image_shape)) for r in runners)
  plan = {}
  # Seed replicas' cohorts share their programs: count the distinct ones.
  regions_before, map_limit = mapped_regions(), mapping_limit()
  distinct = len({runner.program_key for runner in runners})
  compiled: set[tuple[Any, ...]] = set()
  for runner in runners:
    if runner.program_key not in compiled:
      check_mappings(regions_before, mapped_regions(), map_limit, len(compiled), distinct)
      compiled.add(runner.program_key)
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
  check_mappings(regions_before, mapped_regions(), map_limit, distinct, distinct)
  return plan
