"""`synthetic_scenes`: the embedded default dataset, rendered on first use by ``render.py``.

Procedural rooms with Taskonomy-like dense labels (see ``render.py``), built once through TFDS
``download_and_prepare`` into ``data_dir``. Every option that changes a pixel (resolution,
scene counts, views per scene, seed) is part of the builder config's name, and the renderer's
version is the dataset version, so a cache is never reused for different data.

Splits are by scene: scene ``i`` of split ``s`` is sampled from the key ``(seed, s, i)``, so
no scene is seen by two splits and growing one split does not change the others.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
import tensorflow_datasets as tfds

from tg_jax.data import pipeline
from tg_jax.data import render

# Regression labels are stored as float16: far below the networks' error, half the disk.
_FLOAT_LABELS = {"depth": 1, "normals": 3, "keypoints2d": 1, "edges2d": 1, "edges3d": 1,
                 "reshading": 1, "curvature": 2}
SPLITS = ("train", "validation", "test")
# The tasks this dataset provides (registry names) and the stored feature each one reads.
TASK_FEATURES = {
    "segment_semantic": "segment_semantic",
    **{name: name for name in _FLOAT_LABELS},
    "autoencoder": "rgb",  # reconstruct the (noisy) input
    "denoising": "clean_rgb",  # the render before sensor noise
}
TASKS = tuple(TASK_FEATURES)
# The paper's five tasks (the authors' --tasks=sdnkt: 2D edges are Taskonomy's edge_texture).
DEFAULT_TASKS = ("segment_semantic", "depth", "normals", "keypoints2d", "edges2d")
_RENDER_CHUNK = 64  # scenes rendered per call while generating
_PROGRESS_EVERY_S = 30.0  # a long render (e.g. 256x256) says how far it got at most this often


@dataclasses.dataclass
class SyntheticScenesConfig(tfds.core.BuilderConfig):
  """Rendering options; build one with ``SyntheticScenesConfig.make`` to get a matching name."""

  image_size: int = 32
  num_train_scenes: int = 2000
  num_validation_scenes: int = 250
  num_test_scenes: int = 250
  views_per_scene: int = 2
  seed: int = 0

  @classmethod
  def make(cls, *, image_size: int, num_train_scenes: int, num_validation_scenes: int,
           num_test_scenes: int, views_per_scene: int, seed: int) -> "SyntheticScenesConfig":
    name = (f"{image_size}px_{num_train_scenes}-{num_validation_scenes}-{num_test_scenes}"
            f"scenes_{views_per_scene}views_seed{seed}")
    return cls(name=name, description=f"{image_size}x{image_size} renders", image_size=image_size,
               num_train_scenes=num_train_scenes, num_validation_scenes=num_validation_scenes,
               num_test_scenes=num_test_scenes, views_per_scene=views_per_scene, seed=seed)

  def num_scenes(self, split: str) -> int:
    return getattr(self, f"num_{split}_scenes")


class SyntheticScenes(tfds.core.GeneratorBasedBuilder):
  """Procedural rooms rendered by ray casting, with dense labels from the geometry."""

  VERSION = tfds.core.Version(render.RENDERER_VERSION)
  BUILDER_CONFIGS = [SyntheticScenesConfig.make(
      image_size=32, num_train_scenes=2000, num_validation_scenes=250, num_test_scenes=250,
      views_per_scene=2, seed=0)]

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    bytes_ = tfds.features.Encoding.BYTES
    features = {
        "rgb": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8, encoding=bytes_),
        "clean_rgb": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8, encoding=bytes_),
        "segment_semantic": tfds.features.Tensor(shape=(size, size), dtype=np.uint8, encoding=bytes_),
        **{name: tfds.features.Tensor(shape=(size, size, channels), dtype=np.float16, encoding=bytes_)
           for name, channels in _FLOAT_LABELS.items()},
        "scene": np.int64,
        "view": np.int64,
    }
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        description=__doc__,
        metadata=tfds.core.MetadataDict(class_names=list(render.CLASS_NAMES)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: everything is rendered.
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str):
    config = self.builder_config
    split_index = SPLITS.index(split)
    num_scenes = config.num_scenes(split)
    last_report = time.monotonic()
    for first in range(0, num_scenes, _RENDER_CHUNK):
      scenes = range(first, min(first + _RENDER_CHUNK, num_scenes))
      rendered = render.render_scenes([(config.seed, split_index, s) for s in scenes],
                                      config.views_per_scene, config.image_size)
      if time.monotonic() - last_report >= _PROGRESS_EVERY_S:
        print(f"  {split}: {scenes[-1] + 1} of {num_scenes} scenes rendered", file=sys.stderr, flush=True)
        last_report = time.monotonic()
      for i, (scene, view) in enumerate((s, v) for s in scenes for v in range(config.views_per_scene)):
        example = {key: value[i] for key, value in rendered.items()}
        for name in _FLOAT_LABELS:
          example[name] = example[name].astype(np.float16)
        yield f"{scene:07d}_{view}", {**example, "scene": scene, "view": view}


def builder(config) -> SyntheticScenes:
  """The TFDS builder for the rendering options in ``config`` (see ``tg_jax.data.default_config``)."""
  builder_config = SyntheticScenesConfig.make(
      image_size=config.image_size, num_train_scenes=config.num_train_scenes,
      num_validation_scenes=config.num_validation_scenes, num_test_scenes=config.num_test_scenes,
      views_per_scene=config.views_per_scene, seed=config.seed)
  # TFDS refuses a config object that shares a predefined config's name; use the name then.
  if builder_config.name in SyntheticScenes.builder_configs:
    builder_config = builder_config.name
  return SyntheticScenes(config=builder_config, data_dir=config.data_dir, file_format="array_record")


def describe(config) -> str:
  """What preparing renders, for ``tg_jax.data.prepare``'s console line."""
  images = {split: getattr(config, f"num_{split}_scenes") * config.views_per_scene for split in SPLITS}
  return (f"rendering synthetic_scenes ({config.image_size}x{config.image_size}, {sum(images.values())} images: "
          + ", ".join(f"{n} {split}" for split, n in images.items()) + ")")


def prepare(config) -> SyntheticScenes:
  """Renders the dataset into the cache unless it is there already.

  TFDS's progress bars (per split, and for shuffling into files under a temporary name) are off
  while rendering; ``_generate_examples`` reports progress itself when a render takes long.
  """
  scenes = builder(config)
  tfds.display_progress_bar(False)
  try:
    scenes.download_and_prepare()
  finally:
    tfds.display_progress_bar(True)
  return scenes


def available_tasks(prepared: SyntheticScenes) -> tuple[str, ...]:
  del prepared
  return TASKS


def open_split(prepared: SyntheticScenes, split: str, config) -> pipeline.ArraySource:
  """The whole split in memory (27 bytes a pixel: 110 MB for the default training split);
  labels stay float16 until they are batched."""
  del config
  records = prepared.as_data_source(split)
  examples = records.__getitems__(range(len(records)))
  stored = {key: np.stack([e[key] for e in examples]) for key in set(TASK_FEATURES.values())}
  arrays = {"image": stored["rgb"], **{task: stored[feature] for task, feature in TASK_FEATURES.items()}}
  return pipeline.ArraySource(arrays)
