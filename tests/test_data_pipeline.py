"""The dataset-independent pipeline on small sources: statistics, batches, grain's sampler and workers, stream state."""

import types

import grain.python as grain
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


def test_errors_reading_a_batch_reach_the_consumer():
  stats = pipeline.compute_stats(_source(), ("depth",), max_examples=100)
  batches = _dataset(_FailingSource(), stats).train_batches(2, seed=0)
  with pytest.raises(OSError, match="disk on fire"):
    next(batches)


def test_a_stream_restored_from_its_state_goes_on_with_the_same_batches():
  dataset = _dataset(_source())
  batches = dataset.train_batches(3, seed=5, start_step=2)
  for _ in range(4):
    next(batches)
  state = batches.get_state()
  expected = [next(batches)["image"] for _ in range(3)]
  restored = dataset.train_batches(3, seed=5, start_step=6, state=state)
  np.testing.assert_array_equal(np.stack([next(restored)["image"] for _ in range(3)]), np.stack(expected))
  with pytest.raises(ValueError, match="saved data state of toy/train is at step 6, its checkpoint at step 7"):
    dataset.train_batches(3, seed=5, start_step=7, state=state)


# A record source as a TFDS data source gives it: records decoded one at a time, in grain's workers.
def _decode(record):
  return {"image": record["png"], "depth": record["depth"], "depth_mask": record["depth_mask"],
          "segment_semantic": record["segment_semantic"]}


def _records(num_examples=23, size=4):
  arrays = _source(num_examples, size).get(np.arange(num_examples), _source().keys)
  records = [{key.replace("image", "png"): arrays[key][i] for key in arrays} for i in range(num_examples)]
  return pipeline.RecordSource(records, _decode, _source().keys)


def _record_dataset(source, workers):
  stats = pipeline.compute_stats(source, ("depth",), max_examples=100)
  return pipeline.Dataset(name="records", split="train", source=source, task_names=("depth", "segment_semantic"),
                          stats=stats, image_shape=(4, 4, 3), workers=workers)


def test_record_batches_follow_grains_sampler_and_do_not_depend_on_the_worker_count():
  source = _records()
  in_process = _record_dataset(source, workers=0)
  stream = in_process.train_batches(2, seed=7, start_step=3, shard_index=1, num_shards=2)
  expected = [next(stream) for _ in range(7)]  # 28 rows of the global stream: over an epoch's end
  order = grain.IndexSampler(len(source), shard_options=grain.NoSharding(), shuffle=True, num_epochs=None, seed=7)
  for k, batch in enumerate(expected):
    indices = [order[p].record_key for p in range((3 + k) * 4 + 2, (3 + k) * 4 + 4)]  # shard 1: rows 2-3
    np.testing.assert_array_equal(batch["segment_semantic"], source.get(indices, ["segment_semantic"])["segment_semantic"])
    np.testing.assert_array_equal(indices, in_process.train_indices(4, seed=7, step=3 + k)[2:])

  workers = _record_dataset(source, workers=2)
  stream = workers.train_batches(2, seed=7, start_step=3, shard_index=1, num_shards=2)
  got = [next(stream) for _ in range(4)]
  state = stream.get_state()
  resumed = workers.train_batches(2, seed=7, start_step=7, shard_index=1, num_shards=2, state=state)
  got += [next(resumed) for _ in range(3)]
  for batch, want in zip(got, expected):
    for key in want:
      np.testing.assert_array_equal(batch[key], want[key])
  # A state saved with another number of workers restarts the stream at its step: the same batches.
  restarted = in_process.train_batches(2, seed=7, start_step=7, shard_index=1, num_shards=2, state=state)
  np.testing.assert_array_equal(next(restarted)["depth"], expected[4]["depth"])

  shards = [list(workers.eval_batches(3, shard_index=i, num_shards=2)) for i in range(2)]
  assert [len(s) for s in shards] == [4, 4]  # 23 examples in global batches of 6
  rows = np.concatenate([np.concatenate([a["segment_semantic"], b["segment_semantic"]]) for a, b in zip(*shards)])
  weights = np.concatenate([np.concatenate([a["weight"], b["weight"]]) for a, b in zip(*shards)])
  np.testing.assert_array_equal(weights, np.arange(24) < 23)
  np.testing.assert_array_equal(rows[:23], source.get(np.arange(23), ["segment_semantic"])["segment_semantic"])


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
