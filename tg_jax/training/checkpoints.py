"""Resumable runs: the workdir's config guard and the orbax checkpoints of the training state.

A checkpoint holds everything a run needs to continue exactly where it stopped: every cohort's
parameters, batch statistics, optimiser and learning-rate-schedule state, best-validation
checkpoints and trackers (``cohort.CohortState``), plus the step, and each host's training streams'
position (``data``: ``DataStreams``, grain's iterator states, one file per host through grain's orbax
handler). Training batches depend only on ``(seed, step)``, so the step alone would do: the saved
streams are checked against it, and a checkpoint without them (written before they were saved, or
by another number of hosts) restarts the streams at its step.

The state is saved packed: its arrays concatenated into one flat array per dtype (``state``), with
their paths, shapes and dtypes (``layout``) to cut them apart. Orbax spends ~1.6 ms per array it
writes, and a cohort's state has ~1,900 small arrays: packed, the demo's checkpoint (40 networks,
28 MB) saves in a fraction of a second instead of ~6 s, sixteen times a run. Checkpoints written
before packing (no ``layout``) are still restored, array by array.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Mapping, Optional

from absl import logging
from etils import epath
import flax
import grain.checkpoint as grain_checkpoint
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from tg_jax import workdir as workdir_lib
from tg_jax.models import xception

CONFIG_FILE = "config.json"
# Keys that may change between a run and its resumption: where the data lives, how often to log, how
# the work is laid out on devices (results do not depend on them beyond float rounding).
# ``data.decode_threads`` is the key ``data.workers`` replaced.
RESUMABLE_CHANGES = ("data.data_dir", "data.manual_dir", "data.workers", "data.prefetch", "data.decode_threads",
                     "log_every_steps", "num_devices", "max_networks_per_chunk", "memory_fraction",
                     # What finish does after training (the transfer phase has a workdir of its own).
                     "transfer.enabled", "transfer.affinity_csv")
# Keys added since workdirs were first written, with the value that trains what a config without the
# key trains (an older workdir's, or a model family's that lacks it): such configs compare as setting it.
ADDED_KEYS = {"networks.seeds": 1, "transfer.encoders": "", "networks.all_task_sizes": [],
              "selection.helper_tasks": [], "model.downsampling": xception.PAPER_DOWNSAMPLING}


class ConfigMismatchError(ValueError):
  """The workdir holds a run made with a different config."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, Mapping):
    flat = {}
    for key, value in tree.items():
      flat.update(_flatten(value, f"{prefix}{key}."))
    return flat
  # JSON round trip: tuples and lists compare equal, as they do once written to config.json.
  return {prefix[:-1]: json.loads(json.dumps(tree, default=str))}


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def check_or_write_config(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """Writes ``config`` to ``workdir/config.json``, or checks it against the one already there.

  Returns:
    Whether the workdir already held a run (made with a compatible config).

  Raises:
    ConfigMismatchError: naming every key whose value differs, and the way out.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  written = workdir_lib.read_json(path)
  if written is None:
    if jax.process_index() == 0:
      workdir_lib.write_atomic(path, config_to_json(config))
    return False
  previous = {**ADDED_KEYS, **_flatten(written)}
  current = {**ADDED_KEYS, **_flatten(json.loads(config_to_json(config)))}
  differing = sorted(k for k in set(previous) | set(current)
                     if previous.get(k, "<absent>") != current.get(k, "<absent>")
                     and not any(k == free or k.startswith(free + ".") for free in RESUMABLE_CHANGES))
  if differing:
    lines = "\n".join(f"  {k}: {previous.get(k, '<absent>')!r} in the workdir, {current.get(k, '<absent>')!r} now"
                      for k in differing)
    raise ConfigMismatchError(
        f"workdir {workdir} holds a run made with a different config; refusing to resume it.\n"
        f"Differing keys:\n{lines}\nResume with the original config ({path}) or pass a new --workdir.")
  return True


class DataStreams:
  """This host's training streams (``{replica seed: pipeline.Batches}``) as one checkpoint item.

  It has grain's iterator checkpointing protocol (``get_state``/``set_state``), so grain's orbax
  ``CheckpointHandler`` saves it, one file per host; restoring keeps each stream's state as bytes
  (``states``) for ``Dataset.train_batches(state=...)``.
  """

  def __init__(self, streams: Optional[Mapping[int, Any]] = None):
    self._streams = dict(streams or {})
    self.states: dict[int, bytes] = {}

  def get_state(self) -> bytes:
    return json.dumps({str(seed): json.loads(stream.get_state()) for seed, stream in self._streams.items()}).encode()

  def set_state(self, state: bytes) -> None:
    self.states = {int(seed): json.dumps(saved).encode() for seed, saved in json.loads(state).items()}

  def start_prefetch(self) -> None:
    """The streams start reading when they are made from the states."""


def _item_handlers(state: ocp.CheckpointHandler) -> dict[str, Any]:
  """A checkpoint's items and their handlers (new ones per manager: closing a manager closes them)."""
  return {"state": state, "layout": ocp.JsonCheckpointHandler(), "progress": ocp.JsonCheckpointHandler(),
          "data": grain_checkpoint.CheckpointHandler()}


# PRNG key implementations a key array in a state may have (``jax.random.key(seed, impl=...)``).
_KEY_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


def _is_key(dtype: Any) -> bool:
  return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


@functools.lru_cache(maxsize=None)
def _key_impl(dtype: Any) -> str:
  """The implementation name of a PRNG key dtype (``key<fry>`` -> ``threefry2x32``)."""
  for name in _KEY_IMPLS:
    if jax.random.key(0, impl=name).dtype == dtype:
      return name
  raise ValueError(f"a checkpoint cannot hold PRNG keys of type {dtype}; known implementations: {', '.join(_KEY_IMPLS)}")


def _layout(state_dict: Any) -> tuple[list[list[Any]], list[Any], Any]:
  """``([[path, stored shape, stored dtype, dtype], ...], leaves, treedef)`` of a state dict, leaves in
  flattening order. A leaf is stored as itself, a PRNG key array as its raw data (``uint32``)."""
  with_paths, treedef = jax.tree_util.tree_flatten_with_path(state_dict)
  layout = []
  for path, leaf in with_paths:
    stored = leaf
    if _is_key(leaf.dtype):
      stored = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype))
    layout.append([jax.tree_util.keystr(path), list(np.shape(stored)), np.dtype(stored.dtype).name, str(leaf.dtype)])
  return layout, [leaf for _, leaf in with_paths], treedef


def _host_copy(leaf: Any) -> np.ndarray:
  """What a leaf is stored as, on the host: a replicated array's local copy (every host holds all of it),
  a key array's raw data, a host array as is."""
  if isinstance(leaf, jax.Array):
    if _is_key(leaf.dtype):
      leaf = jax.random.key_data(leaf)
    return np.asarray(leaf.addressable_data(0))
  return np.asarray(leaf)


def _packed_sizes(layout: list[list[Any]]) -> dict[str, int]:
  """The length of each stored dtype's packed array."""
  sizes: dict[str, int] = {}
  for _, shape, stored_dtype, _ in layout:
    sizes[stored_dtype] = sizes.get(stored_dtype, 0) + int(np.prod(shape, dtype=np.int64))
  return sizes


def _pack(layout: list[list[Any]], leaves: list[Any]) -> dict[str, np.ndarray]:
  """One flat host array per stored dtype: the leaves stored as it, raveled and concatenated in order."""
  by_dtype: dict[str, list[np.ndarray]] = {}
  for (_, _, stored_dtype, _), leaf in zip(layout, leaves):
    by_dtype.setdefault(stored_dtype, []).append(_host_copy(leaf).ravel())
  return {dtype: np.concatenate(parts) for dtype, parts in by_dtype.items()}


def _unpack(layout: list[list[Any]], packed: Mapping[str, np.ndarray], targets: list[Any]) -> list[Any]:
  """The leaves cut from ``packed``, each placed as its target is (its sharding, else the default device)."""
  offsets = dict.fromkeys(packed, 0)
  leaves = []
  for (_, shape, stored_dtype, _), target in zip(layout, targets):
    size = int(np.prod(shape, dtype=np.int64))
    host = np.asarray(packed[stored_dtype][offsets[stored_dtype]:offsets[stored_dtype] + size]).reshape(shape)
    offsets[stored_dtype] += size
    sharding = getattr(target, "sharding", None)
    if not isinstance(sharding, jax.sharding.Sharding):
      sharding = None
    if _is_key(target.dtype):
      keys = jax.random.wrap_key_data(host, impl=_key_impl(target.dtype))
      leaves.append(keys if sharding is None else jax.device_put(keys, sharding))
    elif sharding is not None:
      leaves.append(jax.make_array_from_callback(tuple(shape), sharding, lambda index, host=host: host[index]))
    else:
      leaves.append(jnp.asarray(host))
  return leaves


def _first_difference(saved: list[list[Any]], wanted: list[list[Any]]) -> str:
  for saved_entry, wanted_entry in zip(saved, wanted):
    if saved_entry != wanted_entry:
      (path, shape, _, dtype), (want_path, want_shape, _, want_dtype) = saved_entry, wanted_entry
      return f"it holds {path} {dtype}{shape} where this run has {want_path} {want_dtype}{want_shape}"
  return f"it holds {len(saved)} arrays where this run has {len(wanted)}"


class NoIntactCheckpointError(workdir_lib.WorkdirError):
  """Every checkpoint of a workdir is damaged."""


def _read_whole(directory: str, step: int) -> None:
  """Reads checkpoint ``step`` of ``directory`` back entirely (metadata, every array, the progress) into
  host memory and drops it; raises whatever the damage makes orbax raise."""
  options = ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False)
  reader = ocp.CheckpointManager(directory, options=options,
                                 item_handlers=_item_handlers(ocp.PyTreeCheckpointHandler()))
  try:
    tree = reader.item_metadata(step)["state"].tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    items = {"state": ocp.args.PyTreeRestore(restore_args=as_numpy), "progress": ocp.args.JsonRestore()}
    if _is_packed(directory, step):
      items["layout"] = ocp.args.JsonRestore()
    restored = reader.restore(step, args=ocp.args.Composite(**items))
    if not isinstance(restored.progress, Mapping) or "step" not in restored.progress:
      raise ValueError(f"its progress is {restored.progress!r}, not the step and network names")
    if "layout" in items:
      sizes = _packed_sizes(restored.layout)
      held = {dtype: array.size for dtype, array in restored.state.items()}
      if held != sizes:
        raise ValueError(f"its packed arrays hold {held} values per dtype where its layout needs {sizes}")
    if _data_file(directory, step).exists():
      reader.restore(step, args=ocp.args.Composite(data=grain_checkpoint.CheckpointRestore(DataStreams())))
  finally:
    reader.close()


def _is_packed(directory: str, step: int) -> bool:
  """Whether checkpoint ``step`` holds its state packed (with a ``layout``), as every one saved now does."""
  return (epath.Path(directory) / str(step) / "layout").exists()


def _data_file(directory: str, step: int) -> epath.Path:
  """This host's file of the ``data`` item (grain's handler names it by process)."""
  return epath.Path(directory) / str(step) / "data" / f"process_{jax.process_index()}-of-{jax.process_count()}.json"


class Checkpointer:
  """The run's checkpoints in ``directory``, through an orbax ``CheckpointManager``.

  Saves are synchronous so that a SIGTERM handler can save and exit; orbax writes each step to a
  temporary directory and renames it when complete, so a kill at any moment leaves the previous
  checkpoint intact. Damage after that (a disk error, a copy cut short, a file overwritten) is found
  by ``latest_intact_step``, which moves damaged checkpoints to ``damaged_directory``.
  """

  def __init__(self, directory: str, max_to_keep: int = 2, damaged_directory: Optional[str] = None):
    self._directory = os.path.abspath(directory)
    self._damaged_directory = damaged_directory
    self._options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=False,
                                                 cleanup_tmp_directories=True)
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(self._directory, options=self._options,
                                 item_handlers=_item_handlers(ocp.StandardCheckpointHandler()))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def latest_intact_step(self) -> Optional[int]:
    """The newest checkpoint that reads back whole (None if there is none yet).

    Each newer, damaged one is named in a warning and moved to ``damaged_directory`` (kept for a look,
    out of the way of the steps the resumed run saves). Reading every array costs a second read of the
    checkpoint at resume; it comes before any compilation, so a damaged checkpoint costs seconds.

    Raises:
      NoIntactCheckpointError: checkpoints exist and every one is damaged; the message names each and
        the way out.
    """
    damaged = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        _read_whole(self._directory, step)
      except Exception as error:  # pylint: disable=broad-except  # any failure to read back is damage
        damaged.append((step, f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"))
        continue
      if damaged and self._damaged_directory is not None and jax.process_index() == 0:
        self._set_aside([s for s, _ in damaged])
      for bad_step, problem in damaged:
        logging.warning("checkpoint %s is damaged (%s); resuming from step %d instead%s",
                        os.path.join(self._directory, str(bad_step)), problem, step,
                        f" (moved to {self._damaged_directory})" if self._damaged_directory else "")
      return step
    if damaged:
      listed = "; ".join(f"{os.path.join(self._directory, str(s))}: {problem}" for s, problem in damaged)
      raise NoIntactCheckpointError(
          f"no checkpoint in {self._directory} reads back whole ({listed}); restore them from a copy, or move "
          f"{self._directory} away to train from the start")
    return None

  def _set_aside(self, steps) -> None:
    os.makedirs(self._damaged_directory, exist_ok=True)
    for step in steps:
      target = os.path.join(self._damaged_directory, str(step))
      suffix = 1
      while os.path.exists(target):
        target, suffix = os.path.join(self._damaged_directory, f"{step}.{suffix}"), suffix + 1
      os.replace(os.path.join(self._directory, str(step)), target)
    self._manager.close()
    self._manager = self._open()

  def save(self, step: int, state: Any, progress: Mapping[str, Any], data: Optional[DataStreams] = None) -> None:
    """Saves a pytree ``state`` (flax structs and optax states allowed), a JSON-able ``progress`` and
    this host's training streams ``data``."""
    layout, leaves, _ = _layout(flax.serialization.to_state_dict(state))
    items = {"state": ocp.args.StandardSave(_pack(layout, leaves)), "layout": ocp.args.JsonSave(layout),
             "progress": ocp.args.JsonSave(dict(progress))}
    if data is not None:
      items["data"] = grain_checkpoint.CheckpointSave(data)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    self._manager.wait_until_finished()

  def data_states(self, step: int) -> dict[int, bytes]:
    """This host's training streams' states saved with step ``step`` (``{replica seed: state}``); empty
    when the checkpoint holds none for this host (written before they were saved, or by another
    number of hosts)."""
    if not _data_file(self._directory, step).exists():
      return {}
    streams = DataStreams()
    self._manager.restore(step, args=ocp.args.Composite(data=grain_checkpoint.CheckpointRestore(streams)))
    return streams.states

  def restore(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
    """Restores step ``step`` into the structure, shapes and shardings of ``target`` (arrays or
    ``jax.ShapeDtypeStruct``s).

    Raises:
      ConfigMismatchError: the checkpoint holds other arrays than ``target`` has.
    """
    target_dict = flax.serialization.to_state_dict(target)
    if not _is_packed(self._directory, step):  # saved array by array, before packing
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_dict)
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()))
      return flax.serialization.from_state_dict(target, restored.state), dict(restored.progress)
    layout, targets, treedef = _layout(target_dict)
    saved = self._manager.restore(step, args=ocp.args.Composite(layout=ocp.args.JsonRestore())).layout
    if saved != layout:
      raise ConfigMismatchError(
          f"checkpoint {os.path.join(self._directory, str(step))} does not hold this run's state: "
          f"{_first_difference(saved, layout)}; resume with the config that wrote it, or pass a new --workdir")
    abstract = {dtype: np.zeros(size, jnp.dtype(dtype)) for dtype, size in _packed_sizes(layout).items()}
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()))
    leaves = _unpack(layout, restored.state, targets)
    return flax.serialization.from_state_dict(target, jax.tree_util.tree_unflatten(treedef, leaves)), \
        dict(restored.progress)

  def progress(self, step: int) -> dict[str, Any]:
    """The ``progress`` saved with step ``step`` (the step and the network names), without the state."""
    restored = self._manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))
    return dict(restored.progress)

  def close(self) -> None:
    self._manager.close()
