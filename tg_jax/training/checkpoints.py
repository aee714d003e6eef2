"""Resumable runs: the workdir's config guard and the orbax checkpoints of the training state.

A checkpoint holds everything a run needs to continue exactly where it stopped: every cohort's
parameters, batch statistics, optimiser and learning-rate-schedule state, best-validation
checkpoints and trackers (``cohort.CohortState``), plus the step. Training batches depend only on
``(seed, step)``, so the step is the data position too.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import flax
import jax
import ml_collections
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"
# Keys that may change between a run and its resumption: where the data lives, how often to log, how
# the work is laid out on devices (results do not depend on them beyond float rounding).
RESUMABLE_CHANGES = ("data.data_dir", "data.manual_dir", "log_every_steps", "num_devices",
                     "max_networks_per_chunk", "memory_fraction")
# Keys added since workdirs were first written, with the value that trains what a workdir without the
# key trained: such a workdir resumes under a config that sets that value.
ADDED_KEYS = {"networks.seeds": 1}


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
  if not os.path.exists(path):
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      temporary = f"{path}.tmp"
      with open(temporary, "w") as f:
        f.write(config_to_json(config))
      os.replace(temporary, path)
    return False
  with open(path) as f:
    previous = _flatten(json.load(f))
  previous = {**ADDED_KEYS, **previous}
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


class Checkpointer:
  """The run's checkpoints in ``directory``, through an orbax ``CheckpointManager``.

  Saves are synchronous so that a SIGTERM handler can save and exit; orbax writes each step to a
  temporary directory and renames it when complete, so a kill at any moment leaves the previous
  checkpoint intact.
  """

  def __init__(self, directory: str, max_to_keep: int = 2):
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                          item_names=("state", "progress"))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, progress: Mapping[str, Any]) -> None:
    """Saves a pytree ``state`` (flax structs and optax states allowed) and a JSON-able ``progress``."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
        progress=ocp.args.JsonSave(dict(progress))), force=True)
    self._manager.wait_until_finished()

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
