"""The constant predictor: what a network must beat to have learned anything.

For each task it predicts the training split's mean label everywhere: the per-channel mean for
dense regression (in the normalised units the loss sees), the class frequencies (as log-probability
logits) for segmentation and classification. Its loss on a split, under the task's own loss, is the
yardstick the report measures every network's improvement against.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from tg_jax import tasks as tasks_lib

# Keeps log(frequency) finite for a class that never occurs in the examples seen.
_MIN_FREQUENCY = 1e-6


def fit(batches: Iterable[Mapping[str, np.ndarray]], task_names: Sequence[str],
        max_batches: int | None = None) -> dict[str, np.ndarray]:
  """Per-task constant output ``[channels]`` from (at most ``max_batches`` of) ``batches``.

  Respects ``batch['weight']`` (padding) and ``<task>_mask`` (invalid pixels).
  """
  totals = {t: np.zeros(tasks_lib.get(t).channels, np.float64) for t in task_names}
  counts = {t: 0.0 for t in task_names}
  for batch in itertools.islice(batches, max_batches):
    weight = np.asarray(batch["weight"], np.float64)
    for name in task_names:
      task = tasks_lib.get(name)
      label = np.asarray(batch[name])
      # Dense regression labels are [b, h, w, c]; the others hold one class id per position.
      positions = label.shape[:-1] if task.kind == tasks_lib.DENSE_REGRESSION else label.shape
      valid = weight.reshape((-1,) + (1,) * (len(positions) - 1))
      if f"{name}_mask" in batch:
        valid = valid * np.asarray(batch[f"{name}_mask"], np.float64)
      valid = np.broadcast_to(valid, positions)
      if task.kind == tasks_lib.DENSE_REGRESSION:
        totals[name] += (valid[..., None] * label).reshape(-1, task.channels).sum(axis=0)
      else:
        totals[name] += np.bincount(label.reshape(-1), weights=valid.reshape(-1), minlength=task.channels)
      counts[name] += float(valid.sum())
  constants = {}
  for name in task_names:
    if counts[name] == 0:
      raise ValueError(f"no valid labels of task {name!r} in the batches given to the constant predictor")
    mean = totals[name] / counts[name]
    if tasks_lib.get(name).kind != tasks_lib.DENSE_REGRESSION:
      mean = np.log(np.maximum(mean, _MIN_FREQUENCY))
    constants[name] = mean.astype(np.float32)
  return constants


def losses(batches: Iterable[Mapping[str, np.ndarray]], constants: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Mean loss of the constant predictor on a split (one pass of ``eval_batches``)."""
  sums = {t: 0.0 for t in constants}
  total_weight = 0.0
  for batch in batches:
    weight = np.asarray(batch["weight"], np.float64)
    total_weight += float(weight.sum())
    for name, constant in constants.items():
      label = jnp.asarray(batch[name])
      task = tasks_lib.get(name)
      shape = label.shape + (task.channels,) if task.kind != tasks_lib.DENSE_REGRESSION else label.shape
      output = jnp.broadcast_to(jnp.asarray(constant), shape)
      per_example = np.asarray(task.loss(output, label, batch.get(f"{name}_mask")), np.float64)
      sums[name] += float(np.sum(np.where(weight > 0, per_example, 0.0) * weight))
  if total_weight == 0:
    raise ValueError("the split given to the constant predictor has no examples")
  return {name: total / total_weight for name, total in sums.items()}
