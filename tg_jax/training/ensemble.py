"""Ensembles of trained networks that solve the same task: does averaging their predictions help?

When the selector picks several networks that all solve a task, inference already runs all of them,
so their predictions for that task can be averaged for free. ``evaluate`` measures what that gains:
for every task that two or more of the named networks solve, the loss of the averaged prediction
against the best single network's, each network with its best-validation parameters.

Averaging follows the task's kind: dense regression outputs are averaged; segmentation and
classification average the softmax probabilities, and the loss (cross-entropy) is taken on the mean
probabilities. Runs after training from the workdir alone: its ``config.json``-equivalent config,
its checkpoint (or its array-job shards' checkpoints) and the dataset.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tg_jax import data
from tg_jax import models
from tg_jax import tasks as tasks_lib
from tg_jax import workdir as workdir_lib
from tg_jax.affinity import meter as meter_lib
from tg_jax.affinity import tag as tag_lib
from tg_jax.training import checkpoints
from tg_jax.training import cohort as cohort_lib
from tg_jax.training import cohorts as cohorts_lib
from tg_jax.training import config as config_lib
from tg_jax.training import networks as networks_lib


def _load_split(config: ml_collections.ConfigDict, split: str):
  return data.load(config.data, tasks=tuple(config.tasks), split=split)


def _run_directories(workdir: str) -> list[workdir_lib.Workdir]:
  """The workdir, or its array-job shards, whichever hold checkpoints."""
  paths = workdir_lib.Workdir(workdir)
  found = [d for d in [paths] + paths.shards() if os.path.isdir(d.checkpoints)]
  if not found:
    raise FileNotFoundError(f"no checkpoints in {workdir} (nor in {workdir}/shards/*); train there first")
  return found


def best_variables(config: ml_collections.ConfigDict, workdir: str, network_names: Sequence[str],
                   image_shape: Sequence[int]) -> dict[str, tuple[Any, dict[str, Any]]]:
  """``{name: (model, variables)}``: each named network's best-validation parameters and batch
  statistics from the last checkpoint of the run (or shard) that trained it.

  ``model`` is the network's cohort model (its outputs may include other networks' tasks).
  """
  wanted = set(network_names)
  found: dict[str, tuple[Any, dict[str, Any]]] = {}
  device = jax.devices()[0]
  mesh = jax.sharding.Mesh(np.asarray([device]), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  optimizer = cohort_lib.make_optimizer(config.optimizer, steps_per_epoch=1)  # only its state's shapes matter
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  trained = []
  for directory in _run_directories(workdir):
    checkpointer = checkpoints.Checkpointer(directory.checkpoints)
    step = checkpointer.latest_step()
    if step is None:
      checkpointer.close()
      continue
    names = checkpointer.progress(step)["networks"]
    trained += names
    if not wanted & set(names):
      checkpointer.close()
      continue
    run_networks = [networks_lib.parse(n, config.tasks) for n in names]
    runners = [cohorts_lib.CohortRunner(spec, config, 1, image_shape, optimizer, dtype, cohort_lib.LOOP,
                                        replicated, replicated)
               for spec in networks_lib.cohorts(run_networks, config.tasks,
                                                not models.shares_one_encoder(config.model))]
    target: dict[str, Any] = {r.spec.name: r.abstract_state(len(r.spec.networks), image_shape) for r in runners}
    measured = meter_lib.measured_network(config, networks_lib.from_config(config))
    if measured in run_networks:
      target[meter_lib.TAG_STATE] = tag_lib.AffinitySum.zeros(len(measured.tasks))
    states, _ = checkpointer.restore(step, target)
    checkpointer.close()
    for runner in runners:
      state = states[runner.spec.name]
      for row, network in enumerate(runner.spec.networks):
        if network.name in wanted:
          pick = lambda tree, row=row: jax.tree.map(lambda leaf: leaf[row], tree)
          found[network.name] = (runner.model, {"params": pick(state.best_params),
                                                "batch_stats": pick(state.best_batch_stats)})
  missing = sorted(wanted - set(found))
  if missing:
    raise ValueError(f"no checkpoint in {workdir} holds network(s) {', '.join(missing)}; its runs trained: "
                     f"{', '.join(trained)}")
  return found


def combine_predictions(task: tasks_lib.Task, outputs: Sequence[jax.Array]) -> jax.Array:
  """The ensemble's output from its members' ``outputs``, in the members' output format.

  Dense regression: the mean output. Segmentation and classification: the log of the mean softmax
  probabilities (logits whose softmax is that mean, so the task's cross-entropy is the loss on it).
  """
  stacked = jnp.stack([o.astype(jnp.float32) for o in outputs])
  if task.kind == tasks_lib.DENSE_REGRESSION:
    return jnp.mean(stacked, axis=0)
  return jnp.log(jnp.mean(jax.nn.softmax(stacked, axis=-1), axis=0))


def evaluate(config: ml_collections.ConfigDict, workdir: str, network_names: Sequence[str],
             split: str = "test") -> dict[str, dict[str, Any]]:
  """Ensemble against single-network loss for every task that 2+ of ``network_names`` solve.

  Args:
    config: the run's config.
    workdir: the run's workdir (or the merged workdir of an array job, whose shards hold checkpoints).
    network_names: networks as named in the results (``Network.name``, method suffixes allowed), all
      of one seed replica (an ensemble averages networks of one training seed; ``records.names_of``
      names a table's rows that way); a name may repeat (an ensemble of a network with itself is the
      network).
    split: ``"test"`` or ``"validation"``.

  Returns:
    ``{task: {"networks": [names solving it], "ensemble_loss": mean loss of the averaged prediction,
    "best_single_loss": the lowest of the members' own mean losses, "single_losses": {name: loss}}}``.
  """
  parsed = [networks_lib.parse(n, config.tasks) for n in network_names]
  seeds = sorted({n.seed for n in parsed})
  if len(seeds) > 1:
    raise ValueError(f"ensemble of networks {', '.join(network_names)} mixes seed replicas {seeds}; pass the "
                     f"names of one seed's replicas (e.g. all without '#<seed>' for seed 0)")
  solvers = {t: [n.name for n in parsed if t in n.tasks] for t in config_lib.served_tasks(config)}
  solvers = {t: names for t, names in solvers.items() if len(names) >= 2}
  if not solvers:
    return {}
  dataset = _load_split(config, split)
  members = sorted({name for names in solvers.values() for name in names})
  variables = best_variables(config, workdir, members, dataset.image_shape)
  apply = {}
  for name, (model, _) in variables.items():
    apply[name] = jax.jit(lambda v, images, model=model: model.apply(v, images, train=False))

  ensemble_sums = {t: 0.0 for t in solvers}
  single_sums = {t: {n: 0.0 for n in names} for t, names in solvers.items()}
  total_weight = 0.0

  def loss_sum(task, output, batch, weight):
    losses = task.loss(output, batch[task.name], batch.get(f"{task.name}_mask"))
    return float(jnp.sum(jnp.where(weight > 0, losses, 0.0) * weight))

  for local in dataset.eval_batches(config.eval_batch_size):
    batch = {k: jnp.asarray(v) for k, v in local.items()}
    weight = batch["weight"]
    outputs = {name: apply[name](variables[name][1], batch["image"]) for name in members}
    for task_name, names in solvers.items():
      task = tasks_lib.get(task_name)
      ensemble_sums[task_name] += loss_sum(task, combine_predictions(task, [outputs[n][task_name] for n in names]),
                                           batch, weight)
      for name in set(names):
        single_sums[task_name][name] += loss_sum(task, outputs[name][task_name], batch, weight)
    total_weight += float(jnp.sum(weight))

  report = {}
  for task_name, names in solvers.items():
    singles = {n: single_sums[task_name][n] / total_weight for n in dict.fromkeys(names)}
    report[task_name] = {"networks": list(names), "ensemble_loss": ensemble_sums[task_name] / total_weight,
                         "best_single_loss": min(singles.values()), "single_losses": singles}
  return report
