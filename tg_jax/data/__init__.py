"""Datasets for multi-task learning, behind one pipeline (the contract is /work/notes/data_api.md).

    cfg = data.default_config()                  # at config.data in experiments
    ds = data.load(cfg, tasks=("segment_semantic", "depth"), split="train")
    for batch in ds.train_batches(64, seed=0): ...

Datasets: ``synthetic_scenes`` (rendered on first use, the default), ``taskonomy`` and
``celeb_a`` (both from a manual directory). Each dataset module provides ``TASKS``,
``DEFAULT_TASKS``, ``builder(config)`` and ``prepare(config)`` (the TFDS builder; ``prepare``
builds the cache once), ``available_tasks(builder)`` and
``open_split(builder, split, config) -> pipeline.ExampleSource``.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

import ml_collections

from tg_jax import tasks as tasks_lib


def _hide_gpus_from_tensorflow():
  """TensorFlow only reads files here; JAX gets every accelerator's memory."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # no start-up banner on every run
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass  # TensorFlow was initialised before this import; its devices can no longer change.


_hide_gpus_from_tensorflow()

# pylint: disable=g-import-not-at-top,wrong-import-position
from tg_jax.data import celeb_a
from tg_jax.data import pipeline
from tg_jax.data import synthetic_scenes
from tg_jax.data import taskonomy

Dataset = pipeline.Dataset
DATASETS = {"synthetic_scenes": synthetic_scenes, "taskonomy": taskonomy, "celeb_a": celeb_a}
SPLITS = ("train", "validation", "test")


def default_config() -> ml_collections.ConfigDict:
  """Data options; experiments keep them at ``config.data``."""
  config = ml_collections.ConfigDict()
  config.name = "synthetic_scenes"
  # TFDS cache directory; None means TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
  config.data_dir = None
  # Square image side; the embedded dataset renders at this size, the others are resized to it.
  config.image_size = 32
  # synthetic_scenes: scenes per split (splits never share a scene), views rendered per scene.
  config.num_train_scenes = 2000
  config.num_validation_scenes = 250
  config.num_test_scenes = 250
  config.views_per_scene = 2
  config.seed = 0
  # taskonomy and celeb_a: the directory holding the manually downloaded files.
  config.manual_dir = None
  # taskonomy: comma-separated building names held out; empty = a fixed 10%/10% random choice.
  config.validation_buildings = ""
  config.test_buildings = ""
  # Label statistics use at most this many training examples (all of synthetic_scenes').
  config.stats_examples = 4000
  # Threads decoding records (taskonomy, celeb_a) and batches kept ready ahead of the trainer.
  config.decode_threads = 8
  config.prefetch = 2
  return config


def _dataset_module(name: str):
  try:
    return DATASETS[name]
  except KeyError:
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}") from None


def dataset_tasks(name: str) -> tuple[str, ...]:
  """The tasks dataset ``name`` provides."""
  return tuple(_dataset_module(name).TASKS)


def available_tasks(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The tasks the prepared dataset has labels for (Taskonomy: the label folders present)."""
  return tuple(_dataset_module(config.name).available_tasks(prepare(config)))


def default_tasks(name: str) -> tuple[str, ...]:
  """The tasks a study on dataset ``name`` uses unless told otherwise (the paper's five, or the
  nine CelebA attributes of Fifty et al. 2021)."""
  return tuple(_dataset_module(name).DEFAULT_TASKS)


def check_tasks(name: str, task_names: Sequence[str]) -> tuple[str, ...]:
  """Validates ``task_names`` against the registry and dataset ``name``; returns them as a tuple."""
  provided = dataset_tasks(name)
  for task in task_names:
    if task not in tasks_lib.names():
      raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(tasks_lib.names())}")
    if task not in provided:
      raise ValueError(f"dataset {name!r} has no task {task!r}; its tasks: {', '.join(provided)}")
  if len(set(task_names)) != len(task_names):
    raise ValueError(f"tasks listed twice: {list(task_names)}")
  return tuple(task_names)


def prepare(config: ml_collections.ConfigDict):
  """Builds the dataset's cache if needed (printing where) and returns its TFDS builder."""
  module = _dataset_module(config.name)
  builder = module.builder(config)
  if not builder.is_prepared():
    print(f"Preparing {config.name} in {builder.data_dir}; this happens once.", file=sys.stderr)
  return module.prepare(config)


def load(config: ml_collections.ConfigDict, tasks: Optional[Sequence[str]] = None,
         split: str = "train") -> pipeline.Dataset:
  """One split of ``config.name`` with the labels of ``tasks`` (default: ``default_tasks``)."""
  module = _dataset_module(config.name)
  task_names = check_tasks(config.name, default_tasks(config.name) if tasks is None else tasks)
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
  builder = prepare(config)
  available = module.available_tasks(builder)
  for task in task_names:
    if task not in available:
      raise ValueError(f"dataset {config.name!r} as prepared from {config.manual_dir!r} has no "
                       f"labels for task {task!r}; its tasks: {', '.join(available)}")
  source = module.open_split(builder, split, config)
  train_source = lambda: source if split == "train" else module.open_split(builder, "train", config)
  stats = pipeline.load_or_compute_stats(str(builder.data_dir), train_source, available,
                                         max_examples=config.stats_examples)
  size = config.image_size
  return pipeline.Dataset(name=config.name, split=split, source=source, task_names=task_names,
                          stats=stats, image_shape=(size, size, 3), prefetch=config.prefetch)
