"""One input pipeline for every dataset: random-access sources -> normalised numpy batches.

A dataset module turns a split into an ``ExampleSource``: random access to raw examples by
index (``image`` uint8 ``[h, w, 3]``; each task's label in its natural units; optional
``<task>_mask``). ``Dataset`` adds what every dataset shares:

- label statistics from the training split (``compute_stats``), stored beside the TFDS cache;
- batches where batch ``k`` depends only on ``(seed, k)``: epoch ``e`` visits the examples in
  the order ``default_rng([seed, e]).permutation(n)`` and step ``k`` takes positions
  ``[k * batch_size, (k + 1) * batch_size)`` of the concatenated epochs, so a run resumed at
  step ``k`` sees exactly the batches it would have seen;
- sharding for multi-host runs: ``batch_size`` is per shard (host); the global batch has
  ``batch_size * num_shards`` rows and shard ``i`` gets rows ``[i * batch_size, (i + 1) * batch_size)``,
  so the hosts together see exactly the batches one host would see with the global size;
- a background thread that prepares the next batches while the trainer runs.

Only numpy runs here; TensorFlow is used by TFDS to build and read files, on the CPU.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import queue
import threading
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from tg_jax import tasks as tasks_lib

STATS_FILE = "tg_jax_label_stats.json"


class ExampleSource(Protocol):
  """Random access to the raw examples of one split."""

  keys: tuple[str, ...]  # the arrays ``get`` can return

  def __len__(self) -> int:
    ...

  def get(self, indices: np.ndarray, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Returns ``keys`` of the examples ``indices``, stacked: ``[len(indices), ...]``."""


class ArraySource:
  """A split held in memory as arrays with a leading example axis."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    sizes = {len(v) for v in arrays.values()}
    if len(sizes) != 1:
      raise ValueError(f"arrays have different numbers of examples: { {k: len(v) for k, v in arrays.items()} }")
    self._arrays = arrays
    self.keys = tuple(arrays)

  def __len__(self) -> int:
    return len(next(iter(self._arrays.values())))

  def get(self, indices, keys):
    return {key: self._arrays[key][indices] for key in keys}


class RecordSource:
  """A split read record by record (e.g. a TFDS ``data_source``) and decoded in threads.

  ``decode(record) -> dict[str, np.ndarray]`` turns one stored example into raw arrays; image
  decoding releases the GIL, so threads decode a batch in parallel.
  """

  def __init__(self, records: Sequence, decode: Callable[[dict], dict[str, np.ndarray]],
               keys: Sequence[str], num_threads: int = 8):
    self._records = records
    self._decode = decode
    self.keys = tuple(keys)
    self._pool = concurrent.futures.ThreadPoolExecutor(num_threads)

  def __len__(self) -> int:
    return len(self._records)

  def get(self, indices, keys):
    def load(index):
      example = self._decode(self._records[int(index)])
      return {key: example[key] for key in keys}
    examples = list(self._pool.map(load, indices))
    return {key: np.stack([e[key] for e in examples]) for key in keys}


# ---------------------------------------------------------------------------------------------
# Label statistics.


def compute_stats(source: ExampleSource, task_names: Sequence[str], *, max_examples: int,
                  chunk: int = 256) -> dict[str, dict[str, list[float]]]:
  """Per-channel mean and standard deviation of the input image and every normalised task.

  Uses up to ``max_examples`` examples of ``source`` (a fixed random subset when there are more)
  and counts only valid pixels where the source has a ``<task>_mask``. Images are in [0, 1].
  """
  normalised = [t for t in task_names if tasks_lib.get(t).normalise_labels]
  count = len(source)
  indices = np.arange(count)
  if count > max_examples:
    indices = np.sort(np.random.default_rng(0).choice(count, max_examples, replace=False))
  sums: dict[str, np.ndarray] = {}
  squares: dict[str, np.ndarray] = {}
  totals: dict[str, np.ndarray] = {}
  keys = ["image"] + normalised + [f"{t}_mask" for t in normalised if f"{t}_mask" in source.keys]
  for start in range(0, len(indices), chunk):
    batch = source.get(indices[start:start + chunk], keys)
    for name in ["image"] + normalised:
      values = batch[name].astype(np.float64)
      if name == "image":
        values /= 255.0
      values = values.reshape(-1, values.shape[-1])
      weights = batch.get(f"{name}_mask")
      weights = np.ones(len(values)) if weights is None else weights.reshape(-1).astype(np.float64)
      sums[name] = sums.get(name, 0) + weights @ values
      squares[name] = squares.get(name, 0) + weights @ (values * values)
      totals[name] = totals.get(name, 0) + weights.sum()
  stats = {}
  for name in sums:
    mean = sums[name] / totals[name]
    std = np.sqrt(np.maximum(squares[name] / totals[name] - mean * mean, 0))
    # A constant channel would divide by zero; leave it unscaled instead.
    std = np.where(std > 1e-6, std, 1.0)
    stats[name] = {"mean": mean.tolist(), "std": std.tolist()}
  stats["num_examples"] = int(len(indices))
  return stats


def load_or_compute_stats(cache_dir: str, train_source: Callable[[], ExampleSource],
                          task_names: Sequence[str], *, max_examples: int) -> dict:
  """Reads the statistics stored in ``cache_dir``, computing them from the train split once."""
  path = os.path.join(cache_dir, STATS_FILE)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  stats = compute_stats(train_source(), task_names, max_examples=max_examples)
  os.makedirs(cache_dir, exist_ok=True)
  temporary = f"{path}.tmp{os.getpid()}"
  with open(temporary, "w") as f:
    json.dump(stats, f, indent=1)
  os.replace(temporary, path)  # atomic, so concurrent runs never read half a file
  return stats


# ---------------------------------------------------------------------------------------------
# Batches.


def _put(items: queue.Queue, stop: threading.Event, item) -> bool:
  """Puts ``item`` unless ``stop`` is set first; returns whether it was put."""
  while not stop.is_set():
    try:
      items.put(item, timeout=0.1)
      return True
    except queue.Full:
      continue
  return False


def _fill(iterator: Iterator, items: queue.Queue, stop: threading.Event):
  try:
    for item in iterator:
      if not _put(items, stop, (item, None)):
        return
    _put(items, stop, (StopIteration, None))
  except Exception as error:  # pylint: disable=broad-except
    # Re-raised in the consumer's thread, where it can be seen.
    _put(items, stop, (None, error))


class _Prefetch:
  """Runs ``iterator`` in a daemon thread, keeping up to ``size`` items ready.

  The thread holds no reference to this object, so dropping the iterator stops the thread.
  """

  def __init__(self, iterator: Iterator, size: int):
    self._queue: queue.Queue = queue.Queue(size)
    self._stop = threading.Event()
    self._done = False
    threading.Thread(target=_fill, args=(iterator, self._queue, self._stop), daemon=True).start()

  def __iter__(self):
    return self

  def __next__(self):
    if self._done:
      raise StopIteration
    item, error = self._queue.get()
    if error is not None:
      self._done = True
      raise error
    if item is StopIteration:
      self._done = True
      raise StopIteration
    return item

  def close(self):
    self._stop.set()

  def __del__(self):
    self.close()


class Dataset:
  """One split of a dataset with the tasks asked for; see the module docstring for batching.

  Attributes:
    name, split: where the examples come from.
    tasks: the task names whose labels batches carry.
    num_examples: examples in the split.
    image_shape: ``(h, w, 3)``.
    image_stats: training-split ``(mean, std)`` per RGB channel of the [0, 1] image.
    label_stats: training-split ``(mean [c], std [c])`` per normalised task.
  """

  def __init__(self, *, name: str, split: str, source: ExampleSource, task_names: Sequence[str],
               stats: dict, image_shape: tuple[int, int, int], prefetch: int = 2):
    self.name = name
    self.split = split
    self.tasks = tuple(task_names)
    self.num_examples = len(source)
    self.image_shape = tuple(image_shape)
    self._source = source
    self._prefetch = prefetch
    as_arrays = lambda entry: (np.asarray(entry["mean"], np.float32), np.asarray(entry["std"], np.float32))
    self.image_stats = as_arrays(stats["image"])
    self.label_stats = {t: as_arrays(stats[t]) for t in self.tasks if tasks_lib.get(t).normalise_labels}
    self._masks = tuple(t for t in self.tasks if f"{t}_mask" in source.keys)
    self._keys = ("image",) + self.tasks + tuple(f"{t}_mask" for t in self._masks)

  def __repr__(self):
    return (f"Dataset({self.name}/{self.split}: {self.num_examples} examples of {self.image_shape}, "
            f"tasks {', '.join(self.tasks)})")

  def _batch(self, indices: np.ndarray, weight: np.ndarray) -> dict[str, np.ndarray]:
    raw = self._source.get(indices, self._keys)
    mean, std = self.image_stats
    batch = {"image": (raw["image"].astype(np.float32) / 255.0 - mean) / std}
    for name in self.tasks:
      task = tasks_lib.get(name)
      if task.normalise_labels:
        mean, std = self.label_stats[name]
        batch[name] = (raw[name].astype(np.float32) - mean) / std
      else:
        batch[name] = raw[name].astype(np.int32)
    for name in self._masks:
      batch[f"{name}_mask"] = raw[f"{name}_mask"].astype(np.float32)
    batch["weight"] = weight.astype(np.float32)
    return batch

  def _shard(self, batch_size: int, shard_index: int, num_shards: int) -> tuple[int, slice]:
    """The global batch size and this shard's rows of it."""
    if batch_size < 1 or num_shards < 1:
      raise ValueError(f"batch_size and num_shards must be >= 1; got {batch_size} and {num_shards}")
    if not 0 <= shard_index < num_shards:
      raise ValueError(f"shard_index {shard_index} is not in [0, {num_shards})")
    return batch_size * num_shards, slice(shard_index * batch_size, (shard_index + 1) * batch_size)

  def train_indices(self, batch_size: int, *, seed: int, step: int) -> np.ndarray:
    """The example indices ``[batch_size]`` of global training batch ``step``."""
    positions = step * batch_size + np.arange(batch_size)
    epochs = positions // self.num_examples
    indices = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
      order = np.random.default_rng([seed, int(epoch)]).permutation(self.num_examples)
      here = epochs == epoch
      indices[here] = order[positions[here] % self.num_examples]
    return indices

  def train_batches(self, batch_size: int, *, seed: int, start_step: int = 0, shard_index: int = 0,
                    num_shards: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Infinite shuffled batches of ``batch_size`` examples (this shard's), from ``start_step`` on."""
    global_size, rows = self._shard(batch_size, shard_index, num_shards)
    ones = np.ones(batch_size, np.float32)

    def batches():
      step = start_step
      while True:
        yield self._batch(self.train_indices(global_size, seed=seed, step=step)[rows], ones)
        step += 1
    return _Prefetch(batches(), self._prefetch)

  def eval_batches(self, batch_size: int, *, shard_index: int = 0,
                   num_shards: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """One pass in index order, ``batch_size`` rows per shard; the last global batch is padded
    with ``weight`` 0 rows.

    Every shard yields the same number of batches, as collectives across hosts require.
    """
    global_size, rows = self._shard(batch_size, shard_index, num_shards)

    def batches():
      for start in range(0, self.num_examples, global_size):
        positions = np.arange(start, start + global_size)[rows]
        real = positions < self.num_examples
        yield self._batch(np.where(real, positions, 0), real)
    return _Prefetch(batches(), self._prefetch)
