"""The transfer phase: Taskonomy's transfer affinity, measured with this run's networks.

For every ordered pair of tasks (source, target), a transfer network ``<target>:from_<source>`` trains
the target's decoder on the frozen encoder of the source's full-size single-task network (its
best-validation checkpoint, seed replica for seed replica). Its loss against the target's own
single-task network is the transfer affinity (``tg_jax.reporting.transfer``), which the paper's
Table 3 and Figure 3 set against the multi-task affinity of pair networks (Table 2).

``tg_jax.finish`` trains them, with ``derived_config``, in ``WORKDIR/transfer`` after the main run
(a workdir of its own, resumable the same way); their losses land in its ``results/methods.json``.
"""

from __future__ import annotations

from typing import Sequence

import ml_collections

from tg_jax import records

# The transfer phase's workdir is WORKDIR/transfer: its encoders come from the workdir above it.
ENCODERS_OF_PHASE = ".."


def network_names(tasks: Sequence[str]) -> tuple[str, ...]:
  """``<target>:from_<source>`` for every ordered pair of distinct tasks, target by target."""
  return tuple(f"{target}{records.METHOD_SEPARATOR}{records.TRANSFER_PREFIX}{source}"
               for target in tasks for source in tasks if source != target)


def derived_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` training every transfer network for the whole schedule, each seed replica on the
  encoder of the same replica of its source, with nothing measured on the side."""
  derived = ml_collections.ConfigDict(config.to_dict())
  derived.networks.subsets = ""
  derived.networks.half_size_singles = False
  derived.networks.extra = network_names(config.tasks)
  # Exactly the listed networks: the main run's wider all-task networks are not retrained here (and
  # the widening would find no all-task network in the list to widen).
  derived.networks.all_task_sizes = ()
  derived.stop_fraction = 1.0
  derived.selection.predict = "none"
  derived.selection.refine = 0
  derived.tag.enabled = False
  derived.evaluation.ensemble = False
  derived.transfer.enabled = False
  derived.transfer.encoders = ENCODERS_OF_PHASE
  return derived
