r"""Writes a grid of samples (the input and every task's label) and prints a dataset's statistics.

    python -m tg_jax.data.inspect --dataset=synthetic_scenes --out=grid.png
    python -m tg_jax.data.inspect --dataset=taskonomy --manual_dir=/data/taskonomy --out=grid.png

Labels are shown in their natural units (normalisation undone): segmentation with one colour per
class, normals and RGB targets as colour images, other dense labels with a colour map.
"""

from __future__ import annotations

import json
from typing import Sequence

from absl import app
from absl import flags
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from tg_jax import console  # pylint: disable=g-import-not-at-top,wrong-import-position
from tg_jax import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from tg_jax import tasks as tasks_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

_DATASET = flags.DEFINE_string("dataset", "synthetic_scenes", f"One of {', '.join(data.names())}.")
_OUT = flags.DEFINE_string("out", "grid.png", "Where to write the grid (PNG).")
_SPLIT = flags.DEFINE_enum("split", "train", list(data.SPLITS), "Split to show.")
_EXAMPLES = flags.DEFINE_integer("examples", 6, "Rows of the grid.")
_TASKS = flags.DEFINE_list("tasks", None, "Tasks to show; default: all the dataset has.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Override config.image_size.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS cache directory.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Manual directory (taskonomy, celeb_a).")


def _to_picture(task: tasks_lib.Task, label: np.ndarray) -> tuple[np.ndarray, dict]:
  """A label of one example -> (array for imshow, imshow keyword arguments)."""
  if task.kind == tasks_lib.SEGMENTATION:
    return label, dict(cmap="tab20", vmin=0, vmax=19, interpolation="nearest")
  if label.shape[-1] == 3:
    low, high = np.percentile(label, [1, 99])
    return np.clip((label - low) / max(high - low, 1e-6), 0, 1), dict(interpolation="nearest")
  return label[..., 0], dict(cmap="viridis", interpolation="nearest")


def write_grid(dataset: data.Dataset, path: str, examples: int) -> None:
  batch = next(iter(dataset.eval_batches(examples)))
  mean, std = dataset.image_stats
  images = np.clip(batch["image"] * std + mean, 0, 1)
  dense = [t for t in dataset.tasks if tasks_lib.get(t).is_dense]
  classes = [t for t in dataset.tasks if not tasks_lib.get(t).is_dense]
  columns = 1 + len(dense)
  figure, axes = plt.subplots(examples, columns, figsize=(1.8 * columns, 1.9 * examples), squeeze=False)
  for row in range(examples):
    axes[row, 0].imshow(images[row], interpolation="nearest")
    caption = ", ".join(f"{t}={batch[t][row]}" for t in classes)
    if caption:
      axes[row, 0].set_xlabel(caption, fontsize=5, wrap=True)
    for column, name in enumerate(dense, start=1):
      task = tasks_lib.get(name)
      label = batch[name][row]
      if task.normalise_labels:
        label_mean, label_std = dataset.label_stats[name]
        label = label * label_std + label_mean
      picture, style = _to_picture(task, label)
      axes[row, column].imshow(picture, **style)
    for axis in axes[row]:
      axis.set_xticks([])
      axis.set_yticks([])
  for column, title in enumerate(["input"] + dense):
    axes[0, column].set_title(title, fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def print_statistics(config, task_names: Sequence[str], dataset: data.Dataset) -> None:
  summary = {"dataset": config.name, "tasks": list(task_names), "image_shape": dataset.image_shape,
             "examples": {split: info.num_examples for split, info in data.prepare(config).info.splits.items()},
             "image_mean_std": [np.round(v.astype(np.float64), 4).tolist() for v in dataset.image_stats],
             "label_mean_std": {t: [np.round(v.astype(np.float64), 4).tolist() for v in s] for t, s in dataset.label_stats.items()}}
  # Class frequencies over up to 2000 examples of the split shown.
  counted = {}
  for name in task_names:
    task = tasks_lib.get(name)
    if task.kind == tasks_lib.DENSE_REGRESSION:
      continue
    counts, seen = np.zeros(task.channels), 0
    for batch in dataset.eval_batches(250):
      real = batch["weight"] > 0
      counts += np.bincount(batch[name][real].reshape(-1), minlength=task.channels)[:task.channels]
      seen += real.sum()
      if seen >= 2000:
        break
    counted[name] = (counts / counts.sum()).round(4).tolist()
  summary["class_frequencies"] = counted
  for key, value in summary.items():
    print(f"{key}: {json.dumps(value)}")


def main(argv: Sequence[str]) -> None:
  del argv
  console.quiet_libraries()
  config = data.default_config()
  config.name = _DATASET.value
  if _IMAGE_SIZE.value:
    config.image_size = _IMAGE_SIZE.value
  config.data_dir = _DATA_DIR.value
  config.manual_dir = _MANUAL_DIR.value
  task_names = tuple(_TASKS.value) if _TASKS.value else data.available_tasks(config)
  dataset = data.load(config, task_names, _SPLIT.value)
  write_grid(dataset, _OUT.value, _EXAMPLES.value)
  print(f"wrote {_OUT.value}")
  print_statistics(config, task_names, dataset)


if __name__ == "__main__":
  app.run(main)
