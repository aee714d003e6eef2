"""One input pipeline for every dataset: random-access sources -> normalised numpy batches, read by grain.

A dataset module turns a split into an ``ExampleSource``: random access to raw examples by
index (``image`` uint8 ``[h, w, 3]``; each task's label in its natural units; optional
``<task>_mask``). ``Dataset`` adds what every dataset shares:

- label statistics from the training split (``compute_stats``), stored beside the TFDS cache;
- batches where batch ``k`` depends only on ``(seed, k)``: the training stream is the epochs'
  orders one after another (position ``p`` is example ``order_e[p % n]`` of epoch ``e = p // n``)
  and step ``k`` takes positions ``[k * G, (k + 1) * G)`` (``G`` the global batch), so a run
  resumed at step ``k`` sees exactly the batches it would have seen. A ``RecordSource`` (a TFDS
  ArrayRecord data source) is ordered by grain's ``IndexSampler`` (its global shuffle, a new one
  each epoch); an ``ArraySource`` (in memory) by ``default_rng([seed, e]).permutation(n)``, drawn
  whole, because its batches are gathered by one vectorised index, which grain's per-record
  sampler would slow several-fold (``docs/performance.md``, "Input pipeline");
- sharding for multi-host runs: ``batch_size`` is per shard (host); the global batch has
  ``batch_size * num_shards`` rows and shard ``i`` gets rows ``[i * batch_size, (i + 1) * batch_size)``,
  so the hosts together see exactly the batches one host would see with the global size;
- reading through grain's ``DataLoader``: a ``RecordSource`` is decoded and normalised example by
  example in ``workers`` processes, each batch by one worker and handed over in shared memory, and
  the batches are the same for every number of workers (``_StreamSampler``), ``prefetch`` batches
  kept ready; an ``ArraySource`` is gathered a whole batch at a time when the consumer asks (JAX's
  asynchronous dispatch overlaps that with the running step);
- exact resumption: ``Batches.get_state`` is the stream's position (grain's iterator state and
  the step), saved with the orbax checkpoint (grain's ``CheckpointHandler``, one file per host)
  and given back to ``train_batches(state=...)``.

Only numpy runs here; TensorFlow is used by TFDS to build and read files, on the CPU.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
from typing import Callable, Optional, Protocol, Sequence

from absl import flags
from absl import logging
import grain.python as grain
import numpy as np

from tg_jax import tasks as tasks_lib

STATS_FILE = "tg_jax_label_stats.json"
# The number of batches of an endless training stream, as grain's samplers need a length.
_ENDLESS = sys.maxsize // 2
# Epoch orders of in-memory splits kept drawn: two per stream (a batch can straddle epochs), four streams.
_KEPT_EPOCH_ORDERS = 8


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
  """A split read record by record from a TFDS data source (ArrayRecord), decoded one example at a time.

  ``decode(record) -> dict[str, np.ndarray]`` turns one stored example into raw arrays. Training
  and evaluation decode in grain's worker processes, so ``records`` and ``decode`` must pickle (a
  TFDS data source does; a module-level function or a ``functools.partial`` of one, not a lambda).
  """

  def __init__(self, records: Sequence, decode: Callable[[dict], dict[str, np.ndarray]], keys: Sequence[str]):
    self._records = records
    self._decode = decode
    self.keys = tuple(keys)

  def __len__(self) -> int:
    return len(self._records)

  def example(self, index: int) -> dict[str, np.ndarray]:
    return self._decode(self._records[int(index)])

  def get(self, indices, keys):
    # Threads: image decoding releases the GIL (used for the statistics, computed once).
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
      examples = list(pool.map(self.example, indices))
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


class _Normalise:
  """Raw arrays of one example (or of a batch, with a leading axis) -> the model's inputs and labels."""

  def __init__(self, tasks: tuple[str, ...], masks: tuple[str, ...], image_stats, label_stats):
    self._tasks = tasks
    self._masks = masks
    self._image_stats = image_stats
    self._label_stats = label_stats

  def __call__(self, raw: dict[str, np.ndarray], weight) -> dict[str, np.ndarray]:
    mean, std = self._image_stats
    out = {"image": (raw["image"].astype(np.float32) / 255.0 - mean) / std}
    for name in self._tasks:
      if name in self._label_stats:
        mean, std = self._label_stats[name]
        out[name] = (raw[name].astype(np.float32) - mean) / std
      else:
        out[name] = raw[name].astype(np.int32)
    for name in self._masks:
      out[f"{name}_mask"] = raw[f"{name}_mask"].astype(np.float32)
    out["weight"] = np.asarray(weight, np.float32)
    return out


class _Examples:
  """grain data source over a ``RecordSource``: example ``key`` normalised, with its ``weight``.

  Keys from ``len(source)`` to ``length`` are evaluation padding: example 0 at weight 0.
  """

  def __init__(self, source: RecordSource, normalise: _Normalise, length: int, description: str):
    self._source = source
    self._normalise = normalise
    self._length = length
    self._description = description

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, key: int) -> dict[str, np.ndarray]:
    real = key < len(self._source)
    return self._normalise(self._source.example(key if real else 0), float(real))

  def __repr__(self) -> str:  # grain checks a restored state against it: no addresses
    return f"_Examples({self._description}, {self._length})"


class _StreamSampler:
  """grain's ``Sampler``: the records that make batch ``first_step + m`` of a stream batch ``m`` of a
  shard's ``DataLoader``, for every number of workers.

  grain reads shard ``i``'s element ``j`` at sampler index ``j * num_shards + i``, deals element ``j``
  to worker ``j % W`` (``W`` = max(1, workers)), each worker batches the elements it gets in turn,
  and batch ``m`` of the output is worker ``m % W``'s batch number ``m // W``. This sampler answers
  index ``j * num_shards + i`` with the record at stream position ``(first_step + m) * G + i * b + r``
  for the batch ``m`` and row ``r`` that element lands in: shard ``i``'s rows of global batch
  ``first_step + m``. ``order`` maps stream positions to records (grain's ``IndexSampler``); without
  one, position ``p`` is record ``p`` (evaluation).
  """

  def __init__(self, order: Optional[grain.IndexSampler], *, batch_size: int, shard_index: int, num_shards: int,
               workers: int, first_step: int, num_batches: int):
    self._order = order
    self._batch_size = batch_size
    self._shard_index = shard_index
    self._num_shards = num_shards
    self._workers = max(1, workers)
    self._first_step = first_step
    # Whole rounds of the workers, so the last batch is complete; the batches past num_batches are
    # never read (``Batches`` stops).
    rounds = -(-num_batches // self._workers)
    self._length = min(rounds * self._workers * batch_size * num_shards, sys.maxsize)  # len() takes no more

  def __len__(self) -> int:
    return self._length

  def position(self, index: int) -> int:
    element, shard = divmod(index, self._num_shards)
    local_batch, row = divmod(element // self._workers, self._batch_size)
    batch = self._first_step + local_batch * self._workers + element % self._workers
    return (batch * self._num_shards + shard) * self._batch_size + row

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    position = self.position(index)
    key = position if self._order is None else self._order[position].record_key
    return grain.RecordMetadata(index=index, record_key=key)

  def __repr__(self) -> str:
    return (f"_StreamSampler({self._order!r}, batch_size={self._batch_size}, shard={self._shard_index}/"
            f"{self._num_shards}, workers={self._workers}, first_step={self._first_step}, length={self._length})")


class _ArrayBatches:
  """grain data source over an ``ArraySource``: element ``k`` is a whole batch, gathered by one index."""

  def __init__(self, source: ArraySource, keys: tuple[str, ...], normalise: _Normalise,
               rows: Callable[[int], tuple[np.ndarray, np.ndarray]], length: int, description: str):
    self._source = source
    self._keys = keys
    self._normalise = normalise
    self._rows = rows
    self._length = length
    self._description = description

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, batch: int) -> dict[str, np.ndarray]:
    indices, weight = self._rows(batch)
    return self._normalise(self._source.get(indices, self._keys), weight)

  def __repr__(self) -> str:
    return f"_ArrayBatches({self._description}, {self._length})"


def _allow_worker_processes() -> None:
  """grain's worker start-up reads an absl flag: programs run by ``absl.app`` have parsed the flags,
  scripts and tests have not (and then have none of their own to parse)."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class Batches:
  """Batches read by a grain ``DataLoader``, an iterator whose state is its position in the stream.

  ``get_state``/``set_state`` follow grain's checkpointing protocol (what grain's orbax
  ``CheckpointHandler`` calls): JSON bytes with the step of the next batch and grain's iterator
  state. A state grain cannot take (saved with another number of workers) restarts the stream at its
  step, which gives the same batches: they depend only on the seed and the step.
  """

  def __init__(self, open_loader: Callable[[int], grain.DataLoader], first_step: int,
               num_batches: Optional[int] = None):
    self._open_loader = open_loader
    self._num_batches = num_batches
    self._start(first_step)

  def _start(self, first_step: int) -> None:
    self._first_step = first_step
    self.next_step = first_step
    self._iterator = iter(self._open_loader(first_step))

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._num_batches is not None and self.next_step - self._first_step >= self._num_batches:
      raise StopIteration
    batch = next(self._iterator)
    self.next_step += 1
    return batch

  def get_state(self) -> bytes:
    return json.dumps({"first_step": self._first_step, "next_step": self.next_step,
                       "loader": json.loads(self._iterator.get_state())}).encode()

  def set_state(self, state: bytes) -> None:
    saved = json.loads(state)
    self._start(saved["first_step"])
    try:
      self._iterator.set_state(json.dumps(saved["loader"]).encode())
    except ValueError as error:
      logging.info("data state not restorable (%s); reading from step %d afresh", str(error).splitlines()[0],
                   saved["next_step"])
      self._start(saved["next_step"])
    self.next_step = saved["next_step"]


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
               stats: dict, image_shape: tuple[int, int, int], workers: int = 0, prefetch: int = 2):
    """``workers``: grain worker processes decoding a ``RecordSource`` (0: threads of this process);
    ``prefetch``: batches they keep ready ahead of the consumer."""
    if workers < 0 or prefetch < 1:
      raise ValueError(f"workers must be >= 0 and prefetch >= 1; got {workers} and {prefetch}")
    self.name = name
    self.split = split
    self.tasks = tuple(task_names)
    self.num_examples = len(source)
    self.image_shape = tuple(image_shape)
    self._source = source
    self._workers = workers if isinstance(source, RecordSource) else 0
    self._prefetch = prefetch
    as_arrays = lambda entry: (np.asarray(entry["mean"], np.float32), np.asarray(entry["std"], np.float32))
    self.image_stats = as_arrays(stats["image"])
    self.label_stats = {t: as_arrays(stats[t]) for t in self.tasks if tasks_lib.get(t).normalise_labels}
    masks = tuple(t for t in self.tasks if f"{t}_mask" in source.keys)
    self._keys = ("image",) + self.tasks + tuple(f"{t}_mask" for t in masks)
    self._normalise = _Normalise(self.tasks, masks, self.image_stats, self.label_stats)
    self._epoch_orders: dict[tuple[int, int], np.ndarray] = {}

  def __repr__(self):
    return (f"Dataset({self.name}/{self.split}: {self.num_examples} examples of {self.image_shape}, "
            f"tasks {', '.join(self.tasks)})")

  def _shard(self, batch_size: int, shard_index: int, num_shards: int) -> tuple[int, slice]:
    """The global batch size and this shard's rows of it."""
    if batch_size < 1 or num_shards < 1:
      raise ValueError(f"batch_size and num_shards must be >= 1; got {batch_size} and {num_shards}")
    if not 0 <= shard_index < num_shards:
      raise ValueError(f"shard_index {shard_index} is not in [0, {num_shards})")
    return batch_size * num_shards, slice(shard_index * batch_size, (shard_index + 1) * batch_size)

  # The order of the training stream.

  def _shuffle(self, seed: int) -> grain.IndexSampler:
    """grain's global shuffle of a ``RecordSource``: position ``p`` -> record, a new order each epoch."""
    if not 0 <= seed < 2 ** 32:
      raise ValueError(f"data seed {seed} is outside [0, 2**32), the seeds grain's sampler takes; "
                       f"choose config.seed in that range")
    return grain.IndexSampler(self.num_examples, shard_options=grain.NoSharding(), shuffle=True,
                              num_epochs=None, seed=seed)

  def _epoch_order(self, seed: int, epoch: int) -> np.ndarray:
    """An ``ArraySource``'s order of epoch ``epoch``; the latest few are kept (batches ask in turn, one
    stream per replica seed)."""
    key = (seed, epoch)
    if key not in self._epoch_orders:
      if len(self._epoch_orders) >= _KEPT_EPOCH_ORDERS:
        del self._epoch_orders[next(iter(self._epoch_orders))]
      self._epoch_orders[key] = np.random.default_rng([seed, epoch]).permutation(self.num_examples)
    return self._epoch_orders[key]

  def train_indices(self, batch_size: int, *, seed: int, step: int) -> np.ndarray:
    """The example indices ``[batch_size]`` of global training batch ``step``."""
    positions = step * batch_size + np.arange(batch_size)
    if isinstance(self._source, RecordSource):
      shuffle = self._shuffle(seed)
      return np.array([shuffle[int(p)].record_key for p in positions], np.int64)
    epochs, within = np.divmod(positions, self.num_examples)
    indices = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
      here = epochs == epoch
      indices[here] = self._epoch_order(seed, int(epoch))[within[here]]
    return indices

  # Loaders.

  def _loader(self, *, first_step: int, num_batches: int, batch_size: int, shard_index: int, num_shards: int,
              seed: Optional[int]) -> grain.DataLoader:
    """A grain ``DataLoader`` of this shard's rows of global batches ``first_step`` on: training batches
    of ``seed``'s stream, or (``seed`` None) evaluation batches in index order, padded with weight 0."""
    global_size, rows = self._shard(batch_size, shard_index, num_shards)
    what = f"{self.name}/{self.split} {','.join(self._keys)}"
    if isinstance(self._source, RecordSource):
      sampler = _StreamSampler(None if seed is None else self._shuffle(seed), batch_size=batch_size,
                               shard_index=shard_index, num_shards=num_shards, workers=self._workers,
                               first_step=first_step, num_batches=num_batches)
      if self._workers:
        _allow_worker_processes()
      return grain.DataLoader(
          # Evaluation keys past the split (to the sampler's whole rounds of workers) are padding.
          data_source=_Examples(self._source, self._normalise,
                                self.num_examples if seed is not None else len(sampler), what),
          sampler=sampler, operations=[grain.Batch(batch_size, drop_remainder=True)],
          worker_count=self._workers, worker_buffer_size=-(-self._prefetch // max(1, self._workers)),
          shard_options=grain.ShardOptions(shard_index, num_shards),
          # In a worker, one thread decodes ahead of the batching; without workers, one per core.
          read_options=grain.ReadOptions(num_threads=1 if self._workers else os.cpu_count(),
                                         prefetch_buffer_size=batch_size))

    def rows_of(batch: int) -> tuple[np.ndarray, np.ndarray]:
      step = first_step + batch
      if seed is not None:
        return self.train_indices(global_size, seed=seed, step=step)[rows], np.ones(batch_size, np.float32)
      positions = np.arange(step * global_size, (step + 1) * global_size)[rows]
      real = positions < self.num_examples
      return np.where(real, positions, 0), real
    return grain.DataLoader(
        data_source=_ArrayBatches(self._source, self._keys, self._normalise, rows_of, num_batches,
                                  f"{what} seed={seed} first_step={first_step} rows={rows.start}:{rows.stop}"),
        sampler=grain.SequentialSampler(num_batches, grain.NoSharding()), shard_options=grain.NoSharding(),
        # Gathered when asked, in the consumer's thread: JAX's asynchronous dispatch already overlaps it
        # with the running step, and a read thread would cost more CPU than the gather (measured).
        read_options=grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))

  def train_batches(self, batch_size: int, *, seed: int, start_step: int = 0, shard_index: int = 0,
                    num_shards: int = 1, state: Optional[bytes] = None) -> Batches:
    """Endless shuffled batches of ``batch_size`` examples (this shard's), from ``start_step`` on.

    ``state``: a ``Batches.get_state()`` saved at step ``start_step`` (the checkpoint's), restored.
    """
    self._shard(batch_size, shard_index, num_shards)
    open_loader = lambda first_step: self._loader(first_step=first_step, num_batches=_ENDLESS, batch_size=batch_size,
                                                  shard_index=shard_index, num_shards=num_shards, seed=seed)
    if state is None:
      return Batches(open_loader, start_step)
    batches = Batches(open_loader, json.loads(state)["first_step"])
    batches.set_state(state)
    if batches.next_step != start_step:
      raise ValueError(f"the saved data state of {self.name}/{self.split} is at step {batches.next_step}, its "
                       f"checkpoint at step {start_step}; the checkpoint is inconsistent: resume from another one")
    return batches

  def eval_batches(self, batch_size: int, *, shard_index: int = 0, num_shards: int = 1) -> Batches:
    """One pass in index order, ``batch_size`` rows per shard; the last global batch is padded
    with ``weight`` 0 rows.

    Every shard yields the same number of batches, as collectives across hosts require.
    """
    global_size, _ = self._shard(batch_size, shard_index, num_shards)
    num_batches = -(-self.num_examples // global_size)
    open_loader = lambda first_step: self._loader(first_step=first_step, num_batches=num_batches,
                                                  batch_size=batch_size, shard_index=shard_index,
                                                  num_shards=num_shards, seed=None)
    return Batches(open_loader, 0, num_batches)
