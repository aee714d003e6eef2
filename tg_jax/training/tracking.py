"""What a run reports while it trains and when it ends, from the networks' state in ``Cohorts``.

Training-loss lines, ``log.jsonl`` events (train, diverged, eval, preempted, done), TensorBoard
scalars, divergence warnings, the results tables (``results/{val,esa,test}.csv``: one row per replica,
with the seed column when the run has more than one seed), the per-example losses behind the
validation and test tables (``results/examples_{val,test}.npz``) and the networks' records
(``results/networks.json``, ``methods.json``). Where each file lives is ``tg_jax.workdir``'s
business; only the writer process (process 0) writes files, every process logs.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from tg_jax import balancing
from tg_jax import records
from tg_jax import workdir as workdir_lib
from tg_jax.training import cohort as cohort_lib
from tg_jax.training import cohorts as cohorts_lib
from tg_jax.training import networks as networks_lib
from tg_jax.training import results

VALIDATION = "validation"  # the data pipeline's name of the validation split, and the constant predictor's key


class Reporter:
  """Reports one run's networks: ``add_training`` every step, ``log_training`` at logging steps,
  ``report_divergence`` and ``validated`` at validations, ``finish`` and ``done`` at the end."""

  def __init__(self, cohorts: cohorts_lib.Cohorts, networks: Sequence[networks_lib.Network],
               costs: Mapping[networks_lib.Network, float], config: ml_collections.ConfigDict,
               paths: workdir_lib.Workdir, schedule: records.Schedule, start_step: int,
               constant_losses: Mapping[str, Mapping[str, float]], is_writer: bool):
    """
    Args:
      cohorts: the run's networks on device.
      networks: this run's networks, in the experiment's order (the order of tables and records).
      costs: each network's inference cost in SNT.
      config: the run's config (its tasks and base learning rate).
      paths: the workdir.
      schedule: the run's schedule.
      start_step: the step the run starts (0) or resumes from; ``log.jsonl`` drops events after it.
      constant_losses: ``{"validation"|"test": {task: loss}}`` of predicting the training mean.
      is_writer: whether this process writes files.
    """
    self._cohorts = cohorts
    self._networks = tuple(networks)
    # The selector's tables hold the paper's candidates, equal-weight networks; networks with a
    # method go to results/methods.json.
    self._table_networks = [n for n in networks if not n.method]
    self._seeded = len(networks_lib.seeds(config)) > 1  # tables with a seed column
    self._costs = costs
    self._task_order = tuple(config.tasks)
    self._base_learning_rate = config.optimizer.learning_rate
    self._paths = paths
    self._schedule = schedule
    self._constant_losses = constant_losses
    self._is_writer = is_writer
    self._run_log = results.RunLog(paths.log, start_step if start_step else None) if is_writer else None
    self._scalars = results.Scalars(paths.tensorboard) if is_writer else None
    self.progress = results.Progress(schedule.stop_step)
    self._reported_diverged: set[str] = set()
    self._loss_sums: list[Any] = [None] * len(cohorts.chunks)  # per chunk, [nets] summed since the last log line
    self._loss_count = 0
    self._last_metrics: list[dict[str, jax.Array]] = []  # per chunk, the last step's metrics

  def add_training(self, metrics: Sequence[Mapping[str, jax.Array]]) -> None:
    """Adds one step's per-chunk metrics (``Cohorts.train``'s) to the next training-loss line."""
    for i, chunk_metrics in enumerate(metrics):
      self._loss_sums[i] = (chunk_metrics["loss"] if self._loss_sums[i] is None
                            else self._loss_sums[i] + chunk_metrics["loss"])
    self._last_metrics = list(metrics)
    self._loss_count += 1

  def log_training(self, step: int) -> None:
    """Logs each network's mean training loss since the last line, its learning rate and (networks
    with a balancing method) its task weights, then any divergence."""
    train_losses, learning_rates, method_weights = {}, {}, {}
    scales = jax.device_get([m["learning_rate_scale"] for m in self._last_metrics])  # per chunk, [nets]
    task_weights = jax.device_get([m["task_weight"] for m in self._last_metrics])  # per chunk, [nets, tasks]
    for chunk, chunk_sum, chunk_scale, chunk_weights in zip(self._cohorts.chunks, jax.device_get(self._loss_sums),
                                                            scales, task_weights):
      for network, value, scale, weights in zip(chunk.networks, chunk_sum / self._loss_count, chunk_scale,
                                                chunk_weights):
        train_losses[network.name] = float(value)
        learning_rates[network.name] = float(scale) * self._base_learning_rate
        if network.method in balancing.names():
          method_weights[network.name] = {t: float(w) for t, w in zip(network.tasks, weights)}
    self._loss_sums, self._loss_count = [None] * len(self._cohorts.chunks), 0
    self.report_divergence(step)
    finite = [v for v in train_losses.values() if math.isfinite(v)]
    logging.info(self.progress.line(step, f"train loss (mean of {len(finite)} networks) "
                                          f"{np.mean(finite) if finite else float('nan'):.4f}"))
    if self._run_log:
      self._run_log.write("train", step, loss=train_losses, learning_rate=learning_rates,
                          **({"task_weight": method_weights} if method_weights else {}))
      self._scalars.write(step, {**{f"train/{n}/loss": v for n, v in train_losses.items()},
                                 **{f"learning_rate/{n}": v for n, v in learning_rates.items()}})

  def report_divergence(self, step: int) -> None:
    """Warns of (and logs) each network that diverged since the last report."""
    for name, diverged_step in self._cohorts.network_values("diverged_step").items():
      if diverged_step != cohort_lib.NOT_YET and name not in self._reported_diverged:
        self._reported_diverged.add(name)
        logging.warning("network %s diverged (loss not finite) at step %d; it is stopped and left out of "
                        "the results tables; the other networks train on", name, int(diverged_step))
        if self._run_log:
          self._run_log.write("diverged", step, network=name, diverged_step=int(diverged_step))

  def validated(self, step: int, losses: Mapping[str, Mapping[str, float]]) -> None:
    """Rewrites ``val.csv`` (and ``esa.csv`` from the ESA step on) and logs the validation ``losses``
    (``{name: {task: loss}}``)."""
    self._write_table("val", self._rows("best_task_loss"))
    if step >= self._schedule.esa_step:
      self._write_table("esa", self._rows("esa_loss"))
    if self._run_log:
      self._run_log.write("eval", step, split="val", loss=losses)
      self._scalars.write(step, {f"val/{n}/{t}": v for n, per_task in losses.items() for t, v in per_task.items()})
    logging.info("validated at step %d: mean loss %s", step,
                 ", ".join(f"{n} {np.mean(list(v.values())):.4f}" for n, v in losses.items()))

  def preempted(self, step: int) -> None:
    if self._run_log:
      self._run_log.write("preempted", step)
    logging.warning("checkpoint saved at step %d; rerun the same command to resume", step)

  def finish(self, test_losses: Mapping[str, Mapping[str, float]],
             examples: Mapping[str, cohorts_lib.ExampleLosses]) -> records.RunRecord:
    """Writes ``test.csv`` from the best-validation states' ``test_losses`` (``{name: {task: loss}}``),
    ``examples_val.npz`` and ``examples_test.npz`` from ``examples`` (``{"val"|"test": per-example
    losses}`` of the best-validation states, from the passes that gave ``test_losses`` and, for
    validation, the same parameters the trackers recorded), ``networks.json`` and ``methods.json``;
    returns the run's record."""
    run = records.RunRecord(network_records(self._networks, self._costs, self._cohorts, test_losses,
                                            self._constant_losses),
                            self._constant_losses, self._schedule)
    if self._is_writer:
      named = write_tables(self._paths, run, self._task_order, self._seeded)
      for split in workdir_lib.EXAMPLE_SPLITS:
        if named[split] is not None:
          self._paths.write_examples(split, workdir_lib.Examples.from_networks(
              named[split].names, named[split].replicas.table.task_names, examples[split]))
      self._paths.write_run(run)  # last: its presence says the run's results are complete
    return run

  def done(self, step: int) -> None:
    if self._run_log:
      self._run_log.write("done", step)

  def close(self) -> None:
    if self._run_log:
      self._run_log.close()
      self._scalars.close()

  def _row(self, network: networks_lib.Network, losses: Mapping[str, float]) -> results.TableRow:
    return results.TableRow(network.name, network.tasks, self._costs[network], network.seed, dict(losses))

  def _rows(self, field: str) -> list[results.TableRow]:
    """Table rows of a ``[nets, tasks]`` tracker, healthy equal-weight networks only."""
    diverged, values = self._cohorts.network_values("diverged_step"), self._cohorts.task_values(field)
    return [self._row(n, {t: float(v) for t, v in values[n.name].items()})
            for n in self._table_networks if diverged[n.name] == cohort_lib.NOT_YET]

  def _write_table(self, split: str, rows: Sequence[results.TableRow]) -> Optional[results.NamedTable]:
    table = results.results_table(self._task_order, rows, split, self._seeded)
    if table is not None and self._is_writer:
      self._paths.write_table(split, table.replicas, seed_column=table.seeded)
    return table


def write_tables(paths: workdir_lib.Workdir, run: records.RunRecord, task_order: Sequence[str],
                 seeded: bool) -> dict[str, Optional[results.NamedTable]]:
  """Writes ``results/{val,test,esa}.csv`` and ``methods.json`` from a finished run's records (what
  ``networks.json`` holds), so these files are derived state: ``train_and_evaluate`` rewrites them on
  a finished workdir without training. Returns each split's table (None without rows).

  Rows: the healthy equal-weight networks in ``run``'s order; ``seeded``: the run has 2+ seeds (the
  seed column, replicas grouped; ``results.results_table``).
  """
  rows = [n for n in run.networks if not n.method and n.status == records.TRAINED]
  named = {}
  for split in workdir_lib.SPLITS:
    # A table's name is the record's field of its losses (``NetworkRecord.val``, ``.test``, ``.esa``).
    table_rows = [results.TableRow(n.name, n.tasks, n.cost, n.seed, getattr(n, split)) for n in rows]
    named[split] = results.results_table(task_order, table_rows, split, seeded)
    if named[split] is not None:
      paths.write_table(split, named[split].replicas, seed_column=seeded)
  if any(n.method for n in run.networks):
    workdir_lib.write_json(paths.methods, method_summaries(run.networks, run.schedule.stop_step))
  return named


def method_summaries(network_records: Sequence[records.NetworkRecord], network_steps: int) -> dict[str, Any]:
  """``results/methods.json``: per trained network with a method (each seed replica under its own
  name, with its ``seed`` when not 0), the validation and test losses of its reported checkpoint
  (the tables' conventions)."""
  methods = {}
  for entry in network_records:
    if not entry.method:
      continue
    if entry.status != records.TRAINED:
      logging.warning("network %s diverged; it is left out of methods.json", entry.name)
      continue
    methods[entry.name] = {"method": entry.method, "tasks": list(entry.tasks), "size": entry.size,
                           "cost": entry.cost, "val": entry.val, "test": entry.test, "network_steps": network_steps}
    if entry.seed:
      methods[entry.name]["seed"] = entry.seed
  return methods


def network_records(networks: Sequence[networks_lib.Network], costs: Mapping[networks_lib.Network, float],
                    cohorts: cohorts_lib.Cohorts, test_losses: Mapping[str, Mapping[str, float]],
                    constant_losses: Mapping[str, Mapping[str, float]]) -> tuple[records.NetworkRecord, ...]:
  """Per network: what it is, whether it diverged, its losses and its improvement over the constant."""
  per_task = {field: cohorts.task_values(field) for field in ("best_task_loss", "task_peak_loss", "task_peak_step",
                                                               "esa_loss")}
  best_steps, diverged_steps = cohorts.network_values("best_step"), cohorts.network_values("diverged_step")
  entries = []
  for network in networks:
    values = lambda field: {t: v.item() for t, v in per_task[field][network.name].items()}
    diverged_step: Optional[int] = int(diverged_steps[network.name])
    if diverged_step == cohort_lib.NOT_YET:
      diverged_step = None
    val, test = values("best_task_loss"), dict(test_losses[network.name])
    # 1 - loss / constant loss: 0 is no better than predicting the training mean, 1 is perfect.
    improvement = {key: {t: 1.0 - losses[t] / constant_losses[split][t] for t in network.tasks}
                   for split, key, losses in ((VALIDATION, "val", val), ("test", "test", test))}
    entries.append(records.NetworkRecord(
        name=network.name, tasks=network.tasks, size=network.size, method=network.method, seed=network.seed,
        cost=costs[network], status=records.TRAINED if diverged_step is None else records.DIVERGED,
        diverged_step=diverged_step,
        best_step=int(best_steps[network.name]), val=val, test=test, esa=values("esa_loss"),
        val_peak=values("task_peak_loss"),
        val_peak_step={t: int(s) for t, s in values("task_peak_step").items()},
        improvement_over_constant=improvement))
  return tuple(entries)
