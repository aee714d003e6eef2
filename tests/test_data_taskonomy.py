"""Taskonomy from a tiny tree in the public release's layout, written by the test."""

import os

import numpy as np
import pytest
from PIL import Image

from tg_jax import data
from tg_jax.data import taskonomy

BUILDINGS = ("allensville", "beechwood", "coffeen", "darden")
VIEWS = ("point_0_view_0", "point_1_view_2")
SIZE = 8


def _write(root, folder, building, view, domain, array):
  path = os.path.join(root, folder, building, f"{view}_domain_{domain}.png")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def _depth_units(building_index):
  return 512 * (1 + building_index)  # 1, 2, 3, 4 metres


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("taskonomy"))
  for b, building in enumerate(BUILDINGS):
    for view in VIEWS:
      _write(root, "rgb", building, view, "rgb", np.full((SIZE, SIZE, 3), 40 * b, np.uint8))
      depth = np.full((SIZE, SIZE), _depth_units(b), np.uint16)
      depth[:2, :2] = 65535  # no depth: masked out
      _write(root, "depth_zbuffer", building, view, "depth_zbuffer", depth)
      normal = np.zeros((SIZE, SIZE, 3), np.uint8)
      normal[..., 0] = 255
      _write(root, "normal", building, view, "normal", normal)
      segment = np.full((SIZE, SIZE), 5, np.uint8)
      segment[:, : SIZE // 2] = 0  # unlabelled: masked out
      _write(root, "segment_semantic", building, view, "segmentsemantic", segment)
      _write(root, "edge_occlusion", building, view, "edge_occlusion", np.full((SIZE, SIZE), 1000 * b, np.uint16))
      if (building, view) != ("darden", VIEWS[1]):  # one view lacks a label: skipped
        _write(root, "keypoints2d", building, view, "keypoints2d", np.full((SIZE, SIZE), 7, np.uint16))
  return root


@pytest.fixture(scope="module")
def config(manual_dir, tmp_path_factory):
  config = data.default_config()
  config.name = "taskonomy"
  config.data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.manual_dir = manual_dir
  config.image_size = 4
  config.validation_buildings = "beechwood"
  config.test_buildings = "coffeen"
  config.workers = 0
  return config


def test_splits_are_by_building_and_views_missing_labels_are_skipped(config):
  builder = data.prepare(config)
  buildings = {}
  for split in data.SPLITS:
    records = builder.as_data_source(split)
    buildings[split] = sorted({records[i]["building"].decode() for i in range(len(records))})
    assert len(records) == {"train": 3, "validation": 2, "test": 2}[split]
  assert buildings == {"train": ["allensville", "darden"], "validation": ["beechwood"], "test": ["coffeen"]}
  assert set(data.available_tasks(config)) == {"segment_semantic_taskonomy", "depth", "normals",
                                               "keypoints2d", "edges3d", "autoencoder"}


def test_labels_units_and_masks(config):
  tasks = ("depth", "normals", "segment_semantic_taskonomy", "edges3d", "autoencoder")
  validation = data.load(config, tasks, "validation")  # beechwood: 2 m everywhere it is valid
  batch = next(iter(validation.eval_batches(2)))
  assert batch["image"].shape == (2, 4, 4, 3)
  mask = batch["depth_mask"]
  assert mask.shape == (2, 4, 4) and mask[:, 0, 0].sum() == 0 and mask[:, 1:, 1:].min() == 1
  np.testing.assert_array_equal(batch["normals_mask"], mask)
  mean, std = validation.label_stats["depth"]
  depth = batch["depth"][..., 0] * std + mean
  np.testing.assert_allclose(depth[mask == 1], 2.0, rtol=1e-5)
  # Depth statistics come from the training views' valid pixels only: two at 1 m, one at 4 m.
  np.testing.assert_allclose(mean, [2.0], rtol=1e-5)
  np.testing.assert_allclose(std, [np.sqrt(2.0)], rtol=1e-5)
  mean, std = validation.label_stats["normals"]
  np.testing.assert_allclose((batch["normals"] * std + mean)[mask == 1], np.tile([1.0, -1.0, -1.0], (int(mask.sum()), 1)),
                             atol=1e-5)
  segment = batch["segment_semantic_taskonomy"]
  np.testing.assert_array_equal(batch["segment_semantic_taskonomy_mask"], (segment != 0).astype(np.float32))
  assert set(np.unique(segment)) == {0, 5}
  assert "autoencoder_mask" not in batch and "edges3d_mask" in batch


def test_tasks_without_labels_and_missing_directories_are_clear_errors(config, tmp_path):
  with pytest.raises(ValueError, match="has no labels for task 'reshading'"):
    data.load(config, ("reshading",))
  with pytest.raises(ValueError, match="has no task 'segment_semantic'"):
    data.load(config, ("segment_semantic",))
  missing = config.copy_and_resolve_references()
  missing.manual_dir = None
  with pytest.raises(ValueError, match="(?s)needs a manual directory.*rgb/<building>/point_<i>_view_<j>"):
    data.load(missing, ("depth",))
  missing.manual_dir = str(tmp_path)
  with pytest.raises(ValueError, match="no rgb/ folder"):
    data.load(missing, ("depth",))
  unknown = config.copy_and_resolve_references()
  unknown.test_buildings = "hogwarts"
  with pytest.raises(ValueError, match="buildings \\['hogwarts'\\] are not in the manual directory"):
    data.load(unknown, ("depth",))


def test_automatic_building_split_holds_out_whole_buildings():
  splits = taskonomy.split_buildings([f"b{i:02d}" for i in range(20)], "", "")
  assert [len(splits[s]) for s in data.SPLITS] == [16, 2, 2]
  assert sorted(sum(splits.values(), [])) == [f"b{i:02d}" for i in range(20)]
  assert splits == taskonomy.split_buildings([f"b{i:02d}" for i in range(20)], "", "")
