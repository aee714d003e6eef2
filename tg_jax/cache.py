"""Caches outside the repository that make a second start faster, never its results different.

- XLA executables (``enable_compilation_cache``): JAX's persistent compilation cache, in
  ``directory()/xla/<platform>``. A program compiled once (a cohort's train step, the networks'
  initialiser, evaluation) is loaded instead of compiled again, by a later run or by the same run
  (the retraining phase initialises its networks with the main run's program). A loaded
  executable is the compiled one, so results are bitwise the same.
- Measured encoder FLOPs (``load_json``/``store_json``, used by ``tg_jax.models.cost``): XLA's cost
  analysis of each encoder the width search compiles, keyed by the module's attributes, the image
  shape and the JAX and jaxlib versions.

The directory is ``$TG_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/tg_jax``, else ``~/.cache/tg_jax``;
``TG_JAX_CACHE_DIR=`` (empty) turns both caches off. Deleting the directory is always safe. On a
cluster whose nodes share a home directory but not a processor type, the executables are kept per
instruction set (``xla/cpu-<hash of the CPU flags>``), so a node never loads code built for another.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform as platform_lib
import tempfile
from typing import Any, Optional

ENV_VAR = "TG_JAX_CACHE_DIR"


def directory() -> Optional[str]:
  """The cache directory (see the module docstring), or None when ``TG_JAX_CACHE_DIR`` is empty."""
  value = os.environ.get(ENV_VAR)
  if value is not None:
    return os.path.expanduser(value) or None
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "tg_jax")


def _cpu_signature() -> str:
  """What the host's compiled CPU code depends on: the machine and its instruction-set flags."""
  flags = ""
  try:
    with open("/proc/cpuinfo") as cpuinfo:
      flags = next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
  except OSError:
    pass
  return hashlib.sha256(f"{platform_lib.machine()} {flags}".encode()).hexdigest()[:12]


def enable_compilation_cache() -> Optional[str]:
  """Turns on JAX's persistent compilation cache under ``directory()``, unless it is off or JAX's
  own ``jax_compilation_cache_dir`` (``JAX_COMPILATION_CACHE_DIR``) is already set, which wins.
  Call it before anything compiles (after ``jax.distributed.initialize`` on multi-host runs).

  Returns:
    The directory in use, or None.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  root = directory()
  if root is None:
    return None
  platform = jax.default_backend()
  subdirectory = f"cpu-{_cpu_signature()}" if platform == "cpu" else platform
  path = os.path.join(root, "xla", subdirectory)
  jax.config.update("jax_compilation_cache_dir", path)
  return path


def _json_path(name: str) -> Optional[str]:
  root = directory()
  return None if root is None else os.path.join(root, f"{name}.json")


def load_json(name: str) -> dict[str, Any]:
  """The entries of cache file ``<directory>/<name>.json``; empty when caching is off or the file is
  missing or unreadable (a damaged cache is ignored, then rewritten)."""
  path = _json_path(name)
  if path is None:
    return {}
  try:
    with open(path) as f:
      entries = json.load(f)
  except (OSError, ValueError):
    return {}
  return entries if isinstance(entries, dict) else {}


def store_json(name: str, key: str, value: Any) -> None:
  """Adds ``key: value`` to cache file ``name``, merged with what is there (other processes may be
  writing too; the file is replaced atomically). Failures to write only cost a later measurement."""
  path = _json_path(name)
  if path is None:
    return
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    entries = load_json(name)
    entries[key] = value
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as f:
      json.dump(entries, f, indent=1, sort_keys=True)
    os.replace(temporary, path)
  except OSError:
    pass
