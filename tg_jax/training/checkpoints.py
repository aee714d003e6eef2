"""Resumable runs: the workdir's config guard and the orbax checkpoints of the training state.

A checkpoint holds everything a run needs to continue exactly where it stopped: every cohort's
parameters, batch statistics, optimiser and learning-rate-schedule state, best-validation
checkpoints and trackers (``cohort.CohortState``), plus the step, and each host's training streams'
position (``data``: ``DataStreams``, grain's iterator states, one file per host through grain's orbax
handler). Training batches depend only on ``(seed, step)``, so the step alone would do: the saved
streams are checked against it, and a checkpoint without them (written before they were saved, or
by another number of hosts) restarts the streams at its step.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

from absl import logging
from etils import epath
import flax
import grain.checkpoint as grain_checkpoint
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from tg_jax import workdir as workdir_lib

CONFIG_FILE = "config.json"
# Keys that may change between a run and its resumption: where the data lives, how often to log, how
# the work is laid out on devices (results do not depend on them beyond float rounding).
# ``data.decode_threads`` is the key ``data.workers`` replaced.
RESUMABLE_CHANGES = ("data.data_dir", "data.manual_dir", "data.workers", "data.prefetch", "data.decode_threads",
                     "log_every_steps", "num_devices", "max_networks_per_chunk", "memory_fraction",
                     # What finish does after training (the transfer phase has a workdir of its own).
                     "transfer.enabled", "transfer.affinity_csv")
# Keys added since workdirs were first written, with the value that trains what a workdir without the
# key trained: such a workdir resumes under a config that sets that value.
ADDED_KEYS = {"networks.seeds": 1, "transfer.encoders": "", "networks.all_task_sizes": [],
              "selection.helper_tasks": []}


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
  current = _flatten(json.loads(config_to_json(config)))
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
  return {"state": state, "progress": ocp.JsonCheckpointHandler(),
          "data": grain_checkpoint.CheckpointHandler()}


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
    restored = reader.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(restore_args=as_numpy), progress=ocp.args.JsonRestore()))
    if not isinstance(restored.progress, Mapping) or "step" not in restored.progress:
      raise ValueError(f"its progress is {restored.progress!r}, not the step and network names")
    if _data_file(directory, step).exists():
      reader.restore(step, args=ocp.args.Composite(data=grain_checkpoint.CheckpointRestore(DataStreams())))
  finally:
    reader.close()


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
    items = {"state": ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
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
    """Restores step ``step`` into the structure, shapes and shardings of ``target``."""
    target_dict = flax.serialization.to_state_dict(target)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_dict)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()))
    return flax.serialization.from_state_dict(target, restored.state), dict(restored.progress)

  def progress(self, step: int) -> dict[str, Any]:
    """The ``progress`` saved with step ``step`` (the step and the network names), without the state."""
    restored = self._manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))
    return dict(restored.progress)

  def close(self) -> None:
    self._manager.close()
