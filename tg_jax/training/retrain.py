"""The paper's second training phase: networks chosen from predictions, trained to convergence.

ESA, HOA and TAG choose networks from predicted losses (early validation losses, pair averages,
affinities). The paper then trains the chosen networks fully and scores each method with them.
A study that trained every subset to convergence already has them (a lookup); a cheaper one (pairs
for HOA, an ESA-only run) does not: ``tg_jax.finish`` trains exactly the chosen networks that lack
converged results, with ``derived_config``, in ``WORKDIR/retrain`` (laid out like any workdir,
resumable the same way), and the report reads their tables beside the main run's.
"""

from __future__ import annotations

from typing import Callable

import ml_collections

from tg_jax import records

# The trainer's signature (``trainer.train_and_evaluate``); tests pass fakes.
Train = Callable[[ml_collections.ConfigDict, str], dict]


def derived_config(config: ml_collections.ConfigDict, names: list[str]) -> ml_collections.ConfigDict:
  """``config`` training just ``names``, for the whole schedule, with nothing measured on the side.

  ``networks.seeds`` is kept: each chosen network is trained with every seed of the main run (a
  replica's ``#<seed>`` in ``names`` names the network, so it is dropped).
  """
  derived = ml_collections.ConfigDict(config.to_dict())
  derived.networks.subsets = ""
  derived.networks.half_size_singles = False
  derived.networks.extra = tuple(dict.fromkeys(records.split_seed(name)[0] for name in names))
  # Exactly the listed networks: the main run's wider all-task networks are not retrained here (and
  # the widening would find no all-task network in the list to widen).
  derived.networks.all_task_sizes = ()
  derived.stop_fraction = 1.0
  derived.selection.predict = "none"
  if "tag" in derived:
    derived.tag.enabled = False  # affinities are the main run's; here only the chosen networks train
  return derived
