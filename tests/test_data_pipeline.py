"""The dataset-independent pipeline on small in-memory sources: statistics, batches, prefetching."""

import threading
import time
import types

import numpy as np
import pytest

from tg_jax import data
from tg_jax.data import pipeline


def _source(num_examples=10, size=4):
  rng = np.random.default_rng(0)
  depth = rng.uniform(1, 5, size=(num_examples, size, size, 1)).astype(np.float32)
  mask = (rng.uniform(size=(num_examples, size, size)) > 0.3).astype(np.float32)
  depth[mask == 0] = 1000.0  # invalid pixels: must not enter the statistics
  return pipeline.ArraySource({
      "image": rng.integers(0, 256, size=(num_examples, size, size, 3), dtype=np.uint8),
      "depth": depth, "depth_mask": mask,
      "segment_semantic": rng.integers(0, 7, size=(num_examples, size, size)).astype(np.uint8)})


def _dataset(source, stats=None, prefetch=2):
  stats = stats or pipeline.compute_stats(source, ("depth", "segment_semantic"), max_examples=100)
  return pipeline.Dataset(name="toy", split="train", source=source, task_names=("depth", "segment_semantic"),
                          stats=stats, image_shape=(4, 4, 3), prefetch=prefetch)


def test_statistics_count_only_valid_pixels():
  source = _source()
  stats = pipeline.compute_stats(source, ("depth", "segment_semantic"), max_examples=100)
  arrays = source.get(np.arange(len(source)), ("image", "depth", "depth_mask"))
  valid = arrays["depth"][..., 0][arrays["depth_mask"] == 1]
  np.testing.assert_allclose(stats["depth"]["mean"], [valid.mean()], rtol=1e-6)
  np.testing.assert_allclose(stats["depth"]["std"], [valid.std()], rtol=1e-6)
  np.testing.assert_allclose(stats["image"]["mean"], arrays["image"].reshape(-1, 3).mean(0) / 255, rtol=1e-6)
  assert "segment_semantic" not in stats  # class labels are not normalised
  # Capped statistics use a fixed subset.
  capped = pipeline.compute_stats(source, ("depth",), max_examples=4)
  assert capped["num_examples"] == 4
  assert capped == pipeline.compute_stats(source, ("depth",), max_examples=4)


def test_batches_are_normalised_and_masked():
  dataset = _dataset(_source())
  batch = next(iter(dataset.eval_batches(10)))
  mean, std = dataset.label_stats["depth"]
  valid = batch["depth_mask"] == 1
  np.testing.assert_allclose(batch["depth"][..., 0][valid].mean(), 0, atol=1e-5)
  np.testing.assert_allclose(batch["depth"][..., 0][valid].std(), 1, atol=1e-5)
  assert batch["segment_semantic"].dtype == np.int32 and "segment_semantic_mask" not in batch


class _FailingSource:
  keys = ("image", "depth", "segment_semantic")

  def __len__(self):
    return 10

  def get(self, indices, keys):
    raise OSError("disk on fire")


def test_errors_in_the_prefetch_thread_reach_the_consumer():
  stats = pipeline.compute_stats(_source(), ("depth",), max_examples=100)
  batches = _dataset(_FailingSource(), stats).train_batches(2, seed=0)
  with pytest.raises(OSError, match="disk on fire"):
    next(batches)
  with pytest.raises(StopIteration):
    next(batches)


def test_dropping_an_infinite_iterator_stops_its_thread():
  dataset = _dataset(_source())
  before = threading.active_count()
  batches = dataset.train_batches(2, seed=0)
  next(batches)
  assert threading.active_count() == before + 1
  del batches
  deadline = time.time() + 5
  while threading.active_count() > before and time.time() < deadline:
    time.sleep(0.05)
  assert threading.active_count() == before


def test_a_registered_dataset_loads_through_the_pipeline(tmp_path):
  source = _source()
  prepared = types.SimpleNamespace(data_dir=str(tmp_path), is_prepared=lambda: True)
  toy = types.SimpleNamespace(
      TASKS=("depth", "segment_semantic"), DEFAULT_TASKS=("depth",), builder=lambda config: prepared,
      prepare=lambda config: prepared, available_tasks=lambda builder: ("depth", "segment_semantic"),
      open_split=lambda builder, split, config: source)
  data.register("toy_registered", toy)
  data.register("toy_registered", toy)  # the same definition again is fine
  assert "toy_registered" in data.names() and data.default_tasks("toy_registered") == ("depth",)
  config = data.default_config()
  config.name = "toy_registered"
  config.image_size = 4
  dataset = data.load(config, split="validation")
  assert dataset.tasks == ("depth",) and dataset.num_examples == len(source)
  batch = next(iter(dataset.eval_batches(4)))
  assert batch["image"].shape == (4, 4, 4, 3) and batch["depth"].shape == (4, 4, 4, 1)
  assert (tmp_path / pipeline.STATS_FILE).exists()  # statistics stored beside the "cache"

  with pytest.raises(ValueError, match="already registered with a different definition"):
    data.register("toy_registered", types.SimpleNamespace(**vars(toy)))
  with pytest.raises(ValueError, match="dataset 'half' lacks DEFAULT_TASKS, available_tasks, open_split"):
    data.register("half", types.SimpleNamespace(TASKS=(), builder=None, prepare=None))
  with pytest.raises(ValueError, match="unknown dataset 'nope'; known datasets: .*synthetic_scenes"):
    config.name = "nope"
    data.load(config)
