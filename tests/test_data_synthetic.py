"""The embedded dataset through the public API: build, splits, statistics, batches, errors."""

import numpy as np
import pytest

from tg_jax import data
from tg_jax import tasks as tasks_lib
from tg_jax.data import synthetic_scenes

ALL_TASKS = data.dataset_tasks("synthetic_scenes")


def _config(data_dir, **overrides):
  config = data.default_config()
  config.data_dir = str(data_dir)
  config.image_size = 17  # any size renders; this one shares test_data_render's compiled renderer
  config.num_train_scenes, config.num_validation_scenes, config.num_test_scenes = 6, 2, 3
  config.views_per_scene = 2
  config.update(overrides)
  return config


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  return _config(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def splits(config):
  return {split: data.load(config, ALL_TASKS, split) for split in data.SPLITS}


def test_sizes_shapes_and_dtypes(splits):
  assert {s: d.num_examples for s, d in splits.items()} == {"train": 12, "validation": 4, "test": 6}
  batch = next(splits["train"].train_batches(4, seed=0))
  assert batch["image"].shape == (4, 17, 17, 3) and batch["image"].dtype == np.float32
  for name in ALL_TASKS:
    task = tasks_lib.get(name)
    if task.kind == tasks_lib.SEGMENTATION:
      assert batch[name].shape == (4, 17, 17) and batch[name].dtype == np.int32
      assert batch[name].max() < task.channels
    else:
      assert batch[name].shape == (4, 17, 17, task.channels) and batch[name].dtype == np.float32
  np.testing.assert_array_equal(batch["weight"], np.ones(4))
  assert tasks_lib.SYNTHETIC_SCENE_CLASSES == len(data.render.CLASS_NAMES)


def test_splits_share_no_scene(config, splits):
  builder = synthetic_scenes.builder(config)
  images = {}
  for split in data.SPLITS:
    records = builder.as_data_source(split)
    examples = records.__getitems__(range(len(records)))
    assert sorted({e["scene"] for e in examples}) == list(range(config[f"num_{split}_scenes"]))
    images[split] = {e["rgb"].tobytes() for e in examples}
  assert not images["train"] & images["validation"] and not images["train"] & images["test"]
  assert not images["validation"] & images["test"]


def test_statistics_come_from_the_training_split(splits):
  train, validation = splits["train"], splits["validation"]
  everything = next(iter(train.eval_batches(train.num_examples)))
  for name in ("depth", "normals", "edges2d"):
    # Normalised with its own statistics, the training split has mean 0 and std 1 per channel.
    values = everything[name].reshape(-1, tasks_lib.get(name).channels)
    np.testing.assert_allclose(values.mean(0), 0, atol=2e-3)
    np.testing.assert_allclose(values.std(0), 1, atol=2e-3)
  assert validation.label_stats["depth"][0] == train.label_stats["depth"][0]
  raw_validation_depth = next(iter(validation.eval_batches(validation.num_examples)))["depth"]
  assert abs(raw_validation_depth.mean()) > 1e-3  # other splits are not re-centred


def test_cache_is_keyed_by_every_rendering_option(tmp_path):
  names = {synthetic_scenes.builder(_config(tmp_path, **change)).builder_config.name
           for change in ({}, {"image_size": 8}, {"num_train_scenes": 7}, {"seed": 1}, {"views_per_scene": 1})}
  assert len(names) == 5


def test_rebuilding_gives_identical_data(config, splits, tmp_path, capfd):
  again = data.load(_config(tmp_path), ALL_TASKS, "validation")
  # The render says what, where and how long; TFDS's "Downloading and preparing dataset Unknown
  # size" (nothing is downloaded) and its progress bars stay off the console.
  out, err = capfd.readouterr()
  assert f"rendering synthetic_scenes (17x17, 22 images: 12 train, 4 validation, 6 test) into {tmp_path}" in err
  assert "... done in" in err and "Downloading" not in out + err and "Generating" not in err
  first = next(iter(splits["validation"].eval_batches(4)))
  second = next(iter(again.eval_batches(4)))
  for key in first:
    np.testing.assert_array_equal(first[key], second[key])


def test_train_batches_depend_only_on_seed_and_step(splits):
  train = splits["train"]
  run = train.train_batches(4, seed=3)
  batches = [next(run) for _ in range(7)]
  resumed = next(train.train_batches(4, seed=3, start_step=5))
  for key in resumed:
    np.testing.assert_array_equal(resumed[key], batches[5][key])
  other_seed = next(train.train_batches(4, seed=4))
  assert not np.array_equal(other_seed["image"], batches[0]["image"])
  # Each epoch visits every example once: 12 examples = 3 batches of 4.
  epoch = np.concatenate([train.train_indices(4, seed=3, step=k) for k in range(3)])
  assert sorted(epoch) == list(range(12))
  # A batch straddling two epochs (batch 5 of 5 examples spans positions 10..14 of 12).
  straddling = train.train_indices(5, seed=3, step=2)
  np.testing.assert_array_equal(straddling[:2], train.train_indices(12, seed=3, step=0)[10:])


def test_shards_split_each_global_batch(splits):
  train = splits["train"]
  whole = next(train.train_batches(4, seed=1, start_step=2))
  halves = [next(train.train_batches(2, seed=1, start_step=2, shard_index=i, num_shards=2)) for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["depth"] for h in halves]), whole["depth"])
  with pytest.raises(ValueError, match="shard_index 2 is not in"):
    train.train_batches(2, seed=0, shard_index=2, num_shards=2)


def test_eval_batches_cover_every_example_once_with_padding(splits):
  test = splits["test"]  # 6 examples
  batches = list(test.eval_batches(4))
  assert len(batches) == 2
  np.testing.assert_array_equal(batches[1]["weight"], [1, 1, 0, 0])
  shards = [list(test.eval_batches(2, shard_index=i, num_shards=2)) for i in range(2)]
  assert [len(s) for s in shards] == [2, 2]
  weights = np.concatenate([b["weight"] for pair in zip(*shards) for b in pair])
  np.testing.assert_array_equal(weights, [1, 1, 1, 1, 1, 1, 0, 0])


def test_clear_errors(config):
  with pytest.raises(ValueError, match="unknown task 'dept'; known tasks: .*depth"):
    data.load(config, ("dept",))
  with pytest.raises(ValueError, match="dataset 'synthetic_scenes' has no task 'black_hair'"):
    data.load(config, ("black_hair",))
  with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
    data.dataset_tasks("mnist")
  with pytest.raises(ValueError, match="unknown split"):
    data.load(config, ("depth",), split="val")
