"""Datasets for multi-task learning, found by name (``config.data.name``), behind one pipeline.

    cfg = data.default_config()                  # at config.data in experiments
    ds = data.load(cfg, tasks=("segment_semantic", "depth"), split="train")
    for batch in ds.train_batches(64, seed=0): ...

Datasets: ``synthetic_scenes`` (rendered on first use, the default), ``taskonomy`` and
``celeb_a`` (both from a manual directory). ``register(name, dataset)`` adds one, as
``models.register`` adds a model family. A dataset is a module (or any object) providing:

- ``TASKS``: the task names (``tg_jax.tasks``) it can have labels for; ``DEFAULT_TASKS``: those a
  study uses unless told otherwise.
- ``builder(config)``: its TFDS builder for ``config`` (the ``config.data`` options);
  ``prepare(config)``: builds the cache once (a no-op when ``builder.is_prepared()``) and returns
  the builder.
- ``available_tasks(builder)``: the tasks the prepared data has labels for (Taskonomy: the label
  folders present).
- optionally ``CONFIG_KEYS``: ``config.data`` options it reads beyond ``default_config``'s (a config
  key no part reads is refused as a typo).
- optionally ``describe(config)``: what preparing does, for the console line ``prepare`` prints
  (e.g. "rendering synthetic_scenes (32x32, 5000 images: ...)"; default "preparing <name>").
- ``open_split(builder, split, config) -> pipeline.ExampleSource``: an ``ArraySource`` for small
  data or a ``RecordSource`` over a TFDS data source (its decode function must pickle: grain's
  worker processes run it), whose examples hold ``image`` (uint8
  ``[h, w, 3]``) and one label per task (dense regression in natural units, class ids as ints),
  optionally ``<task>_mask``.

``pipeline`` gives every such dataset its label statistics (computed once, stored beside the
cache), batching through grain (worker processes for records), host sharding and exact
resumption. An in-memory dataset (the tests' fakes) may instead provide ``load(config, tasks,
split)`` returning a ``pipeline.Dataset`` (or an object with its interface); it bypasses the cache. WORKSPACE.md, "How to add a dataset", has the
steps.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import sys
import time
from typing import Any, Optional, Sequence

from etils import epath
import ml_collections

from tg_jax import tasks as tasks_lib


def _hide_gpus_from_tensorflow():
  """TensorFlow only reads and writes files here: JAX gets every accelerator's memory, and
  TensorFlow's start-up notices stay off the console (set either variable to override)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # C++ INFO lines off; warnings and errors show
  # Its oneDNN kernels (and their notice on every import) serve computation TensorFlow does not do here.
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  if multiprocessing.parent_process() is not None:
    # A process started by multiprocessing (grain's data workers) reads TFDS files without
    # TensorFlow; importing it would add ~10 s to each worker's start.
    return
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
SPLITS = ("train", "validation", "test")

# What a dataset provides (see the module docstring): its tasks, and either the TFDS-backed
# functions the pipeline reads through or, for in-memory datasets, ``load``.
_REQUIRED = ("TASKS", "DEFAULT_TASKS")
_PIPELINE_FUNCTIONS = ("builder", "prepare", "available_tasks", "open_split")
_DATASETS: dict[str, Any] = {}


def register(name: str, dataset: Any) -> None:
  """Makes ``dataset`` (a module or object with the attributes above) loadable as ``name``."""
  missing = [a for a in _REQUIRED if not hasattr(dataset, a)]
  if not hasattr(dataset, "load"):
    missing += [a for a in _PIPELINE_FUNCTIONS if not hasattr(dataset, a)]
  if missing:
    raise ValueError(f"dataset {name!r} lacks {', '.join(missing)}; a dataset provides TASKS, DEFAULT_TASKS "
                     f"and either {', '.join(_PIPELINE_FUNCTIONS)} or load (see tg_jax.data's docstring)")
  if name in _DATASETS and _DATASETS[name] is not dataset:
    raise ValueError(f"dataset {name!r} is already registered with a different definition")
  _DATASETS[name] = dataset


def names() -> list[str]:
  """The registered datasets' names."""
  return sorted(_DATASETS)


register("synthetic_scenes", synthetic_scenes)
register("taskonomy", taskonomy)
register("celeb_a", celeb_a)


def default_config() -> ml_collections.ConfigDict:
  """Data options; experiments keep them at ``config.data``."""
  config = ml_collections.ConfigDict()
  config.name = "synthetic_scenes"
  # TFDS cache directory; None means TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
  # A string placeholder, so that --config.data.data_dir=DIR can set it.
  config.data_dir = ml_collections.config_dict.placeholder(str)
  # Square image side; the embedded dataset renders at this size, the others are resized to it.
  config.image_size = 32
  # synthetic_scenes: scenes per split (splits never share a scene), views rendered per scene.
  config.num_train_scenes = 2000
  config.num_validation_scenes = 250
  config.num_test_scenes = 250
  config.views_per_scene = 2
  config.seed = 0
  # taskonomy and celeb_a: the directory holding the manually downloaded files.
  config.manual_dir = ml_collections.config_dict.placeholder(str)
  # taskonomy: comma-separated building names held out; empty = a fixed 10%/10% random choice.
  config.validation_buildings = ""
  config.test_buildings = ""
  # Label statistics use at most this many training examples (all of synthetic_scenes').
  config.stats_examples = 4000
  # grain worker processes decoding records (taskonomy, celeb_a; 0: threads of the trainer's process;
  # None: one per CPU core) and the batches they keep ready ahead of the trainer. Neither changes the
  # batches; in-memory splits (synthetic_scenes) are gathered in the trainer's thread.
  config.workers = ml_collections.config_dict.placeholder(int)
  config.prefetch = 2
  return config


def _dataset_module(name: str):
  try:
    return _DATASETS[name]
  except KeyError:
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(names())}") from None


def config_keys(name: str) -> tuple[str, ...]:
  """The ``config.data`` options dataset ``name`` may read: ``default_config``'s and its ``CONFIG_KEYS``."""
  return tuple(default_config().keys()) + tuple(getattr(_dataset_module(name), "CONFIG_KEYS", ()))


def dataset_tasks(name: str) -> tuple[str, ...]:
  """The tasks dataset ``name`` provides."""
  return tuple(_dataset_module(name).TASKS)


def available_tasks(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The tasks the prepared dataset has labels for (Taskonomy: the label folders present)."""
  module = _dataset_module(config.name)
  if hasattr(module, "load"):
    return tuple(module.TASKS)
  return tuple(module.available_tasks(prepare(config)))


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
  """Builds the dataset's cache if needed (saying what, where and how long) and returns its TFDS builder."""
  module = _dataset_module(config.name)
  if hasattr(module, "load"):
    raise ValueError(f"dataset {config.name!r} is held in memory; it has no cache to prepare")
  builder = module.builder(config)
  # (TFDS warns of a missing dataset_info.json when asked about a folder that does not exist yet.)
  if epath.Path(builder.data_dir).exists() and builder.is_prepared():
    return module.prepare(config)
  what = module.describe(config) if hasattr(module, "describe") else f"preparing {config.name}"
  print(f"{what} into {builder.data_dir} (once; later runs reuse it) ...", file=sys.stderr, flush=True)
  start = time.perf_counter()
  # TFDS prints "Downloading and preparing dataset Unknown size ..." and "... downloaded and prepared
  # to ..." to stdout: nothing is downloaded, and the lines here say the rest.
  with contextlib.redirect_stdout(io.StringIO()):
    prepared = module.prepare(config)
  print(f"... done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
  return prepared


def load(config: ml_collections.ConfigDict, tasks: Optional[Sequence[str]] = None,
         split: str = "train") -> pipeline.Dataset:
  """One split of ``config.name`` with the labels of ``tasks`` (default: ``default_tasks``)."""
  module = _dataset_module(config.name)
  task_names = check_tasks(config.name, default_tasks(config.name) if tasks is None else tasks)
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
  if hasattr(module, "load"):
    return module.load(config, task_names, split)
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
  workers = os.cpu_count() if config.workers is None else config.workers
  return pipeline.Dataset(name=config.name, split=split, source=source, task_names=task_names, stats=stats,
                          image_shape=(size, size, 3), workers=workers, prefetch=config.prefetch)
