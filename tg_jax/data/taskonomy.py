"""`taskonomy`: the Taskonomy release (Zamir et al. 2018) from a manual directory.

The directory has the layout of the public release: one folder per domain, one sub-folder per
building, one PNG per view::

    <manual_dir>/rgb/<building>/point_<i>_view_<j>_domain_rgb.png
    <manual_dir>/depth_zbuffer/<building>/point_<i>_view_<j>_domain_depth_zbuffer.png
    <manual_dir>/normal/<building>/point_<i>_view_<j>_domain_normal.png
    ...

Only ``rgb`` is required; every label folder that is present becomes a task (``DOMAINS``).
Views missing one of those labels are skipped and counted. Images are resized to
``image_size`` when the TFDS cache is built. Splits are by building: whole buildings go to
validation and test (named in the config, or a fixed 10%/10% random choice).

The cache's name hashes the image size, the label folders present and the building split, which
are read from the manual directory, so it must stay in place after the cache is built.

Masks follow the paper's code (tstandley/taskgrouping): depth, normals, reshading, curvature
and occlusion edges are scored only where the z-buffer depth is below 2**13 / 512 = 16 m;
semantic segmentation ignores class 0 (unlabelled). Without a depth_zbuffer folder there are
no depth masks.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from tg_jax.data import pipeline

# Task name -> (domain folder, the domain in file names, stored channels, stored dtype, nearest).
# Labels whose values are codes or carry invalid markers are resized with nearest neighbours.
DOMAINS = {
    "segment_semantic_taskonomy": ("segment_semantic", "segmentsemantic", 1, np.uint8, True),
    "depth": ("depth_zbuffer", "depth_zbuffer", 1, np.uint16, True),
    "normals": ("normal", "normal", 3, np.uint8, False),
    "keypoints2d": ("keypoints2d", "keypoints2d", 1, np.uint16, False),
    "edges2d": ("edge_texture", "edge_texture", 1, np.uint16, False),
    "edges3d": ("edge_occlusion", "edge_occlusion", 1, np.uint16, False),
    "reshading": ("reshading", "reshading", 3, np.uint8, False),
    "curvature": ("principal_curvature", "principal_curvature", 3, np.uint8, False),
}
TASKS = tuple(DOMAINS) + ("autoencoder",)
# The paper's five tasks (the authors' --tasks=sdnkt: 2D edges are edge_texture).
DEFAULT_TASKS = ("segment_semantic_taskonomy", "depth", "normals", "keypoints2d", "edges2d")
_DEPTH_UNITS_PER_METRE = 512.0
_DEPTH_VALID_BELOW = 2 ** 13  # the paper code's mask threshold, in stored units
_MASKED_BY_DEPTH = ("depth", "normals", "reshading", "curvature", "edges3d")
SPLITS = ("train", "validation", "test")
_RGB_NAME = re.compile(r"^(point_\d+_view_\d+)_domain_rgb\.png$")

LAYOUT = """\
Expected layout (the public Taskonomy release; only rgb/ is required, each label folder present
becomes a task):
  <manual_dir>/rgb/<building>/point_<i>_view_<j>_domain_rgb.png
  <manual_dir>/segment_semantic/<building>/point_<i>_view_<j>_domain_segmentsemantic.png
  <manual_dir>/depth_zbuffer/<building>/point_<i>_view_<j>_domain_depth_zbuffer.png
  <manual_dir>/normal/<building>/point_<i>_view_<j>_domain_normal.png
  <manual_dir>/keypoints2d/<building>/point_<i>_view_<j>_domain_keypoints2d.png
  <manual_dir>/edge_texture/<building>/point_<i>_view_<j>_domain_edge_texture.png
  <manual_dir>/edge_occlusion/<building>/point_<i>_view_<j>_domain_edge_occlusion.png
  <manual_dir>/reshading/<building>/point_<i>_view_<j>_domain_reshading.png
  <manual_dir>/principal_curvature/<building>/point_<i>_view_<j>_domain_principal_curvature.png
Download it with the Taskonomy/Omnidata tools, then pass --config.data.manual_dir=<manual_dir>."""


def label_path(manual_dir: str, task: str, building: str, view: str) -> Optional[str]:
  """The file of ``task``'s label for ``view``; releases spell the segmentation domain two ways."""
  folder, domain, *_ = DOMAINS[task]
  for spelling in dict.fromkeys([domain, folder]):
    path = os.path.join(manual_dir, folder, building, f"{view}_domain_{spelling}.png")
    if os.path.exists(path):
      return path
  return None


def check_manual_dir(manual_dir: Optional[str]) -> list[str]:
  """Returns the buildings under ``manual_dir/rgb``, or raises with the expected layout."""
  if not manual_dir:
    raise ValueError(f"taskonomy needs a manual directory: set config.data.manual_dir.\n{LAYOUT}")
  rgb = os.path.join(os.path.expanduser(manual_dir), "rgb")
  if not os.path.isdir(rgb):
    raise ValueError(f"taskonomy: no rgb/ folder in manual directory {manual_dir!r}.\n{LAYOUT}")
  buildings = sorted(b for b in os.listdir(rgb) if os.path.isdir(os.path.join(rgb, b)))
  if len(buildings) < 3:
    raise ValueError(f"taskonomy: {rgb} has {len(buildings)} building folders; train, validation "
                     f"and test need at least one building each.\n{LAYOUT}")
  return buildings


def split_buildings(buildings: list[str], validation: str, test: str) -> dict[str, list[str]]:
  """Assigns whole buildings to splits: the named ones, else a fixed 10%/10% random choice."""
  named = {"validation": [b for b in validation.split(",") if b], "test": [b for b in test.split(",") if b]}
  for split, chosen in named.items():
    unknown = sorted(set(chosen) - set(buildings))
    if unknown:
      raise ValueError(f"taskonomy: {split} buildings {unknown} are not in the manual directory; "
                       f"buildings found: {', '.join(buildings)}")
  if not named["validation"] and not named["test"]:
    order = list(np.random.default_rng(0).permutation(buildings))
    held_out = max(1, round(0.1 * len(buildings)))
    named = {"validation": order[:held_out], "test": order[held_out:2 * held_out]}
  if not named["validation"] or not named["test"]:
    raise ValueError("taskonomy: name both validation_buildings and test_buildings, or neither")
  if set(named["validation"]) & set(named["test"]):
    raise ValueError(f"taskonomy: buildings in both validation and test: "
                     f"{sorted(set(named['validation']) & set(named['test']))}")
  held = set(named["validation"]) | set(named["test"])
  return {"train": [b for b in buildings if b not in held],
          "validation": sorted(named["validation"]), "test": sorted(named["test"])}


@dataclasses.dataclass
class TaskonomyConfig(tfds.core.BuilderConfig):
  image_size: int = 256
  tasks: tuple[str, ...] = tuple(DOMAINS)
  buildings: dict = dataclasses.field(default_factory=dict)  # split -> building names

  @classmethod
  def make(cls, image_size: int, tasks: tuple[str, ...], buildings: dict) -> "TaskonomyConfig":
    # Everything that changes the stored examples goes into the name, so caches never mix.
    key = repr((image_size, tasks, sorted((k, tuple(v)) for k, v in buildings.items())))
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return cls(name=f"{image_size}px_{digest}", image_size=image_size, tasks=tasks, buildings=buildings,
               description=f"{image_size}x{image_size}; tasks {', '.join(tasks)}; buildings {buildings}")


def _resize(array: np.ndarray, size: int, nearest: bool) -> np.ndarray:
  """Resizes ``[h, w, c]`` to ``[size, size, c]`` channel by channel, keeping the dtype."""
  if array.shape[:2] == (size, size):
    return array
  method = Image.NEAREST if nearest else Image.BOX
  channels = [np.asarray(Image.fromarray(array[..., c].astype(np.float32), mode="F").resize(
      (size, size), method)) for c in range(array.shape[-1])]
  return np.round(np.stack(channels, -1)).astype(array.dtype)


def _read_png(path: str, channels: int, dtype) -> np.ndarray:
  array = np.asarray(Image.open(path))
  if array.ndim == 2:
    array = array[..., None]
  if array.shape[-1] != channels:
    if array.shape[-1] == 1:
      array = np.repeat(array, channels, axis=-1)
    elif array.shape[-1] > channels:
      array = array[..., :channels]
    else:
      raise ValueError(f"{path}: {array.shape[-1]} channels, expected {channels}")
  return array.astype(dtype)


class Taskonomy(tfds.core.GeneratorBasedBuilder):
  """Taskonomy views and the labels of the domains present in the manual directory."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    features = {"image": tfds.features.Image(shape=(size, size, 3)),
                "building": tfds.features.Text(), "view": tfds.features.Text()}
    for task in self.builder_config.tasks:
      _, _, channels, dtype, _ = DOMAINS[task]
      if dtype == np.uint8:
        features[task] = tfds.features.Image(shape=(size, size, channels))
      else:
        # TFDS decodes 16-bit PNGs to numpy only with OpenCV; zlib-compressed tensors need nothing.
        features[task] = tfds.features.Tensor(shape=(size, size, channels), dtype=dtype,
                                              encoding=tfds.features.Encoding.ZLIB)
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features),
                                          homepage="http://taskonomy.stanford.edu/")

  def _split_generators(self, dl_manager):
    manual_dir = str(dl_manager.manual_dir)
    return {split: self._generate_examples(manual_dir, buildings)
            for split, buildings in self.builder_config.buildings.items()}

  def _generate_examples(self, manual_dir: str, buildings: list[str]):
    size = self.builder_config.image_size
    skipped = 0
    for building in buildings:
      for name in sorted(os.listdir(os.path.join(manual_dir, "rgb", building))):
        match = _RGB_NAME.match(name)
        if not match:
          continue
        view = match.group(1)
        paths = {task: label_path(manual_dir, task, building, view) for task in self.builder_config.tasks}
        if any(path is None for path in paths.values()):
          skipped += 1
          continue
        example = {"image": _resize(_read_png(os.path.join(manual_dir, "rgb", building, name), 3, np.uint8),
                                    size, nearest=False),
                   "building": building, "view": view}
        for task, path in paths.items():
          _, _, channels, dtype, nearest = DOMAINS[task]
          example[task] = _resize(_read_png(path, channels, dtype), size, nearest)
        yield f"{building}/{view}", example
    if skipped:
      print(f"taskonomy: skipped {skipped} views of {len(buildings)} buildings with missing labels")


def _domains_present(manual_dir: str) -> tuple[str, ...]:
  return tuple(task for task, (folder, *_) in DOMAINS.items()
               if os.path.isdir(os.path.join(manual_dir, folder)))


def builder(config) -> Taskonomy:
  manual_dir = os.path.expanduser(config.manual_dir or "")
  buildings = check_manual_dir(config.manual_dir)
  splits = split_buildings(buildings, config.validation_buildings, config.test_buildings)
  builder_config = TaskonomyConfig.make(config.image_size, _domains_present(manual_dir), splits)
  return Taskonomy(config=builder_config, data_dir=config.data_dir, file_format="array_record")


def prepare(config) -> Taskonomy:
  taskonomy = builder(config)
  taskonomy.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.path.expanduser(config.manual_dir)))
  return taskonomy


def available_tasks(prepared: Taskonomy) -> tuple[str, ...]:
  """The tasks whose label folders were in the manual directory, and auto-encoding."""
  return tuple(prepared.builder_config.tasks) + ("autoencoder",)


def decode(example: dict, tasks: tuple[str, ...]) -> dict[str, np.ndarray]:
  """Stored example -> raw arrays in the tasks' units, with the paper's masks."""
  out = {"image": example["image"], "autoencoder": example["image"]}
  if "depth" in tasks:
    stored = example["depth"][..., 0]
    valid = (stored < _DEPTH_VALID_BELOW).astype(np.float32)
    out["depth"] = stored[..., None] / _DEPTH_UNITS_PER_METRE
    for task in _MASKED_BY_DEPTH:
      if task in tasks:
        out[f"{task}_mask"] = valid
  for task in tasks:
    if task == "depth":
      continue
    value = example[task]
    if task == "segment_semantic_taskonomy":
      out[task] = value[..., 0]
      out[f"{task}_mask"] = (value[..., 0] != 0).astype(np.float32)
      continue
    value = value.astype(np.float32) / np.iinfo(value.dtype).max
    if task == "normals":
      value = value * 2 - 1
    elif task == "reshading":
      value = value.mean(axis=-1, keepdims=True)
    elif task == "curvature":
      value = value[..., :2]
    out[task] = value
  return out


def open_split(prepared: Taskonomy, split: str, config) -> pipeline.RecordSource:
  tasks = prepared.builder_config.tasks
  probe = decode({"image": np.zeros((1, 1, 3), np.uint8),
                  **{t: np.zeros((1, 1, DOMAINS[t][2]), DOMAINS[t][3]) for t in tasks}}, tasks)
  del config
  return pipeline.RecordSource(prepared.as_data_source(split), functools.partial(decode, tasks=tasks),
                               keys=tuple(probe))
