"""What the command-line programs print: the project's own lines, libraries' only when they matter.

Under ``absl.app`` every INFO record reaches the console, so a first run would open with JAX's
failed TPU probe ("Unable to initialize backend 'tpu'"), TFDS's dataset bookkeeping and orbax's
details of every save. ``quiet_libraries()`` keeps INFO lines from ``tg_jax``'s own files and
warnings and errors from everyone. TensorFlow's C++ start-up notices are silenced where it is
imported (``tg_jax.data``), through environment variables a user can set otherwise.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Sequence

from absl import app
from absl import logging as absl_logging

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class LibraryFilter(logging.Filter):
  """Passes warnings and errors, and below that only records logged from ``tg_jax``'s files."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.pathname.startswith(_PACKAGE_DIR)


def quiet_libraries() -> None:
  """Installs ``LibraryFilter`` on absl's console handler (once); call it first in ``main``."""
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, LibraryFilter) for f in handler.filters):
    handler.addFilter(LibraryFilter())


EXIT_USAGE = 2  # bad flags, config or workdir: fix and rerun


def fail(message: str) -> None:
  """Prints ``error: <message>`` (the problem and the fix, no traceback) and exits with EXIT_USAGE."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USAGE)


class UsageError(ValueError):
  """A flag value that cannot be used; the message says how to fix it."""


def check_helper_tasks(helper_tasks: Sequence[str], task_names: Sequence[str], path: str) -> None:
  """Refuses ``--helper_tasks`` naming a task the table at ``path`` has no column for."""
  unknown = [h for h in helper_tasks if h not in task_names]
  if unknown:
    raise UsageError(f"--helper_tasks names {', '.join(unknown)}, not a task of {path} (its tasks: "
                     f"{', '.join(task_names)}); name helpers among them, or --helper_tasks= for none")


def table_command_main(run_command: Callable[[], str]) -> Callable[[list[str]], None]:
  """The ``main`` of a command that reads tables and prints a text (``tg_jax.select``, ``tg_jax.regret``,
  ``tg_jax.data_size``):
  bad flags, tables or budgets (every ``ValueError``: ``UsageError``, ``tables.TableError``,
  ``selector.NoFeasibleSolution``) end in one ``error:`` line and exit status ``EXIT_USAGE``."""
  def main(argv: list[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
      print(run_command())
    except ValueError as error:
      fail(str(error))
  return main
