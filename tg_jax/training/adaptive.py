"""The adaptive loop trained for real (``config.selection.adaptive``; ``experiments/adaptive.py``).

``tg_jax.selection.adaptive`` decides what to train; ``TrainingOracle`` trains it with the trainer,
as the retraining phase and ESA's refinement rounds do (``retrain.derived_config``): each screening
or promotion is a workdir of its own, ``WORKDIR/adaptive/<k>_early`` (stopped at ``esa_fraction``)
or ``<k>_full``. A training whose ``networks.json`` exists is read, not rerun, so the same command
resumes a preempted loop. Networks the main run trained (the singles the loop starts from) are read
from its tables. Costs are the networks' nominal sizes, so that keys match across trainings.

``run`` writes ``WORKDIR/adaptive.json``: the rounds, the compute (trainings and network-steps) and
the selection among the networks trained to convergence, scored on test.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any, Optional, Sequence

import ml_collections

from tg_jax import records
from tg_jax import workdir as workdir_lib
from tg_jax.selection import adaptive, study, tables
from tg_jax.selection.tables import ResultsTable
from tg_jax.training import retrain
from tg_jax.training import trainer

HALF_SIZE = 0.5


class Preempted(RuntimeError):
  """A training of the loop was preempted; the same command resumes it."""


def _nominal(table: ResultsTable, runs: Sequence[records.RunRecord]) -> ResultsTable:
  """``table`` with each network's measured cost replaced by its nominal size (from ``runs``)."""
  size = {n.key: n.size for run in runs for n in run.networks}
  return dataclasses.replace(table, costs=[size[table.network_key(r)] for r in range(table.num_networks)])


def candidates(task_names: Sequence[str]) -> list[adaptive.Key]:
  """Every network the loop may train: each group of the tasks at size 1 and each half-size single."""
  groups = [frozenset(g) for k in range(1, len(task_names) + 1) for g in itertools.combinations(task_names, k)]
  return ([tables.network_key(g, 1.0) for g in groups] +
          [tables.network_key((t,), HALF_SIZE) for t in task_names])


class TrainingOracle:
  """Trains what the loop asks for, in ``WORKDIR/adaptive/<k>_{early,full}``; remembers test losses."""

  def __init__(self, config: ml_collections.ConfigDict, paths: workdir_lib.Workdir, train: retrain.Train,
               main: workdir_lib.StudyTables):
    self.config, self.paths, self.train = config, paths, train
    self.task_names = tuple(config.tasks)
    self.trainings = 0
    self.test: Optional[ResultsTable] = None
    self.main = {split: _nominal(table, main.runs) for split, table in
                 (("val", main.val), ("test", main.test), ("esa", main.esa)) if table is not None}

  def _rows(self, table: ResultsTable, keys: Sequence[adaptive.Key]) -> ResultsTable:
    rows = {table.network_key(r): r for r in range(table.num_networks)}
    return adaptive.narrowed(table, [rows[k] for k in keys])

  def _trained(self, keys: Sequence[adaptive.Key], early: bool) -> dict[str, ResultsTable]:
    # Networks with every table already (the main run's singles, a retraining phase's) are read.
    main_keys = set.intersection(*[{t.network_key(r) for r in range(t.num_networks)} for t in self.main.values()]
                                 ) if len(self.main) == 3 else set()
    if set(keys) <= main_keys:
      return {split: self._rows(table, keys) for split, table in self.main.items()}
    self.trainings += 1
    paths = self.paths.adaptive_training(self.trainings, early)
    if paths.read_run() is None:
      names = [records.name_of(k[0], k[1], self.task_names) for k in keys]
      derived = retrain.derived_config(self.config, names)
      if early:
        derived.stop_fraction = self.config.esa_fraction
      outcome = self.train(derived, paths.path)
      if outcome["status"] == trainer.STATUS_PREEMPTED:
        raise Preempted(f"the adaptive loop's training {paths.path} was preempted; run the same command again to "
                        f"resume it")
    run = paths.read_run()
    result = {}
    for split in ("val", "test", "esa"):
      path = paths.table(split)
      if os.path.exists(path):
        result[split] = self._rows(_nominal(tables.read_csv(path), [run]), keys)
    return result

  def early(self, keys: Sequence[adaptive.Key]) -> ResultsTable:
    trained = self._trained(keys, early=True)
    return trained["esa"] if "esa" in trained else trained["val"]

  def converged(self, keys: Sequence[adaptive.Key]) -> tuple[ResultsTable, ResultsTable]:
    trained = self._trained(keys, early=False)
    self.test = trained["test"] if self.test is None else self.test.concat(trained["test"])
    return trained["val"], trained.get("esa", trained["val"])


def settings_of(config: ml_collections.ConfigDict) -> adaptive.Settings:
  options = config.selection.adaptive
  return adaptive.Settings(float(options.trainings), config.esa_fraction, options.screen, options.promote,
                           options.max_rounds)


def run(config: ml_collections.ConfigDict, paths: workdir_lib.Workdir, main: workdir_lib.StudyTables,
        train: retrain.Train, budgets: Optional[Sequence[float]] = None) -> dict[str, Any]:
  """Runs the loop after the main run in ``paths``; writes and returns ``adaptive.json``'s content.

  Raises:
    Preempted: a training was preempted (the same command resumes the loop).
  """
  oracle = TrainingOracle(config, paths, train, main)
  keys = candidates(config.tasks)
  budgets = list(budgets) if budgets is not None else [1.0 + 0.5 * i for i in range(2 * len(config.tasks) - 1)]
  result = adaptive.run(oracle, keys, budgets, settings_of(config))
  selection = study.run(result.converged, oracle.test.with_task_order(result.converged.task_names),
                        budgets=budgets, with_baselines=False)
  schedule = paths.read_run().schedule
  steps = None if schedule is None else schedule.total_steps
  name = lambda k: records.name_of(k[0], k[1], config.tasks)
  value = {"candidates": len(keys), "trainings": result.trainings, "snt_trainings": result.snt_trainings,
           "network_steps": None if steps is None else result.trainings * steps, "stable": result.stable,
           "counted": result.describe(),
           "rounds": [{"screened": [name(k) for k in r.screened], "promoted": [name(k) for k in r.promoted],
                       "trainings": r.trainings} for r in result.rounds],
           "selection": selection.to_json()}
  workdir_lib.write_json(paths.adaptive, value)
  return value
