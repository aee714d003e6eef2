"""Preemption: SIGTERM, what a cluster sends before it takes a job's machines, becomes a flag the
training loop checks; the loop then saves a checkpoint and returns, and the same command resumes."""

from __future__ import annotations

import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np


class StopRequest:
  """While entered (``with StopRequest() as stop``), SIGTERM sets ``requested`` instead of killing
  the process; on exit the previous handler is back."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self) -> "StopRequest":
    # Only the main thread may set handlers; elsewhere (a test runner's worker thread) SIGTERM keeps its own.
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: saving a checkpoint and exiting", signum)
    self.requested = True

  def agreed(self, step: int, log_every: int) -> bool:
    """Whether to stop now; across hosts all must agree, so they vote at logging steps only."""
    if jax.process_count() == 1:
      return self.requested
    if step % log_every:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested))))
