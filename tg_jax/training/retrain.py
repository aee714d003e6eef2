"""The paper's second training phase: networks chosen from predictions, trained to convergence.

ESA, HOA and TAG choose networks from predicted losses (early validation losses, pair averages,
affinities). The paper then trains the chosen networks fully and scores each method with them.
A study that trained every subset to convergence already has them (a lookup); a cheaper one (pairs
for HOA, an ESA-only run) does not: ``run`` trains exactly the chosen networks that lack converged
results, in ``WORKDIR/retrain`` (laid out like any workdir, resumable the same way), and the report
reads their tables beside the main run's.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

from absl import logging
import ml_collections

from tg_jax.reporting import analysis
from tg_jax.reporting import report
from tg_jax.training import trainer

Train = Callable[[ml_collections.ConfigDict, str], dict]


def missing_networks(workdir: str) -> list[str]:
  """Names (``depth+normals``, ``depth@0.5``) of the networks ESA, HOA or TAG chose at some default
  budget that have no converged results in ``workdir`` (main run or a finished retraining phase)."""
  study_tables = report.load_study(workdir)
  comparison = analysis.compare_methods(study_tables, with_baselines=False)
  missing = analysis.untrained_choices(comparison)
  return analysis.network_names(missing, study_tables.networks, study_tables.task_names)


def derived_config(config: ml_collections.ConfigDict, names: list[str]) -> ml_collections.ConfigDict:
  """``config`` training just ``names``, for the whole schedule, with nothing measured on the side."""
  derived = ml_collections.ConfigDict(config.to_dict())
  derived.networks.subsets = ""
  derived.networks.half_size_singles = False
  derived.networks.extra = tuple(names)
  derived.stop_fraction = 1.0
  derived.selection.predict = "none"
  if "tag" in derived:
    derived.tag.enabled = False  # affinities are the main run's; here only the chosen networks train
  return derived


def run(config: ml_collections.ConfigDict, workdir: str,
        train: Train = trainer.train_and_evaluate) -> Optional[dict[str, Any]]:
  """Trains the missing chosen networks in ``WORKDIR/retrain``; None when none are missing.

  Returns the trainer's result (``status`` ``"complete"`` or ``"preempted"``; rerun to resume).
  """
  names = missing_networks(workdir)
  if not names:
    return None
  logging.info("retraining phase: %d network(s) chosen from predictions lack converged results: %s",
               len(names), ", ".join(names))
  return train(derived_config(config, names), os.path.join(workdir, report.RETRAIN_DIR))
