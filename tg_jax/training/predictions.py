"""Figure 6's predictions: what each method's chosen networks output on a few test images.

``tg_jax.finish`` names, per method, the network serving each task at one budget
(``reporting.analysis.serving_networks``); ``predict`` loads those networks' best-validation
parameters from the checkpoints of the runs that trained them (the main run, its shards, the
retraining phase), runs them on the first test images and returns a ``workdir.Predictions``, which
``finish`` writes to ``WORKDIR/predictions.npz`` for the report (numpy) to draw.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tg_jax import data
from tg_jax import tasks as tasks_lib
from tg_jax import workdir as workdir_lib
from tg_jax.training import config as config_lib
from tg_jax.training import ensemble

NUM_IMAGES = 3


def _display_images(dataset, images: np.ndarray) -> np.ndarray:
  """``[examples, h, w, 3]`` input images back in [0, 1]: the pipeline's standardisation undone where
  the dataset has its statistics, else each image stretched to [0, 1]."""
  stats = getattr(dataset, "image_stats", None)
  if stats is not None:
    mean, std = stats
    return np.clip(images * std + mean, 0.0, 1.0)
  low = images.min(axis=(1, 2, 3), keepdims=True)
  high = images.max(axis=(1, 2, 3), keepdims=True)
  return (images - low) / np.maximum(high - low, 1e-12)


def _as_label_layout(task: tasks_lib.Task, output: jax.Array) -> np.ndarray:
  """A network's output in its label's layout: class ids for segmentation and classification."""
  if task.kind == tasks_lib.DENSE_REGRESSION:
    return np.asarray(output, np.float32)
  return np.asarray(jnp.argmax(output, axis=-1), np.int32)


def predict(config: ml_collections.ConfigDict, sources: Sequence[tuple[ml_collections.ConfigDict, str]],
            serving: Mapping[str, Mapping[str, str]], budget: float,
            num_images: int = NUM_IMAGES) -> workdir_lib.Predictions:
  """Each method's predictions on the first ``num_images`` test images.

  Args:
    config: the run's config (tasks, data).
    sources: ``(config, workdir)`` of each run whose checkpoints may hold the networks, in the order
      to look (the main run, then the retraining phase with its derived config).
    serving: ``{method: {task: network name}}`` over every task, names as in the results
      (``records.names_of``).
    budget: the budget the networks were chosen at (recorded with the predictions).
    num_images: how many test images.
  """
  tasks = config_lib.served_tasks(config)
  dataset = data.load(config.data, tasks=tasks, split="test")
  batch = next(iter(dataset.eval_batches(num_images)))
  real = np.asarray(batch["weight"]) > 0
  batch = {k: np.asarray(v)[real] for k, v in batch.items()}
  wanted = sorted({name for per_task in serving.values() for name in per_task.values()})
  outputs: dict[str, dict[str, jax.Array]] = {}
  # One compiled forward pass per model (a cohort's networks share theirs): applied op by op, the
  # demo's dozen networks took ~12 s on CPU.
  forward: dict[int, Any] = {}
  for source_config, directory in sources:
    here = [name for name in wanted if name not in outputs and _trained_in(directory, name)]
    if not here:
      continue
    variables = ensemble.best_variables(source_config, directory, here, dataset.image_shape)
    for name, (model, parameters) in variables.items():
      if id(model) not in forward:
        forward[id(model)] = jax.jit(functools.partial(model.apply, train=False))
      outputs[name] = forward[id(model)](parameters, jnp.asarray(batch["image"]))
  missing = [name for name in wanted if name not in outputs]
  if missing:
    raise ValueError(f"no checkpoint of {', '.join(d for _, d in sources)} holds network(s) {', '.join(missing)}; "
                     f"train them (python -m tg_jax.main with the same config) first")
  methods = tuple(serving)
  unserved = [f"{m}: {t}" for m in methods for t in tasks if t not in serving[m]]
  if unserved:
    raise ValueError(f"every method needs a network for every task; none for {', '.join(unserved)}")
  names = np.asarray([[serving[m][t] for t in tasks] for m in methods], str)
  kinds, truth, predicted = [], [], []
  for j, task_name in enumerate(tasks):
    task = tasks_lib.get(task_name)
    kinds.append(task.kind)
    truth.append(batch[task_name])
    predicted.append(np.stack([_as_label_layout(task, outputs[names[i, j]][task_name]) for i in range(len(methods))]))
  return workdir_lib.Predictions(budget, _display_images(dataset, batch["image"]), tasks, tuple(kinds),
                                 tuple(truth), methods, names, tuple(predicted))


def _trained_in(directory: str, name: str) -> bool:
  """Whether ``directory``'s records (or its shards') list network ``name``."""
  paths = workdir_lib.Workdir(directory)
  for run in [paths] + paths.shards():
    record = run.read_run()
    if record is not None and any(n.name == name for n in record.networks):
      return True
  return False
