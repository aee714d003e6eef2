"""The console shows tg_jax's own INFO lines, and libraries' warnings and errors only."""

import logging
import os
import subprocess
import sys

from tg_jax import console

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record(pathname, level):
  return logging.LogRecord("absl", level, pathname, 1, "message", None, None)


def test_library_info_is_dropped_and_warnings_kept():
  keep = console.LibraryFilter().filter
  own = os.path.join(os.path.dirname(console.__file__), "training", "trainer.py")
  library = os.path.join(os.path.dirname(logging.__file__), "site-packages", "jax", "_src", "xla_bridge.py")
  assert keep(_record(own, logging.INFO))
  assert not keep(_record(library, logging.INFO))  # e.g. "Unable to initialize backend 'tpu'"
  assert keep(_record(library, logging.WARNING)) and keep(_record(library, logging.ERROR))


def test_importing_tensorflow_through_tg_jax_prints_no_notices_unless_the_user_asks():
  def import_data(**settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    env.update(settings)
    code = "import os, tg_jax.data; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    return run

  quiet = import_data()
  assert quiet.stdout == "0\n"
  assert "oneDNN" not in quiet.stderr and "cpu_feature_guard" not in quiet.stderr, quiet.stderr
  assert import_data(TF_ENABLE_ONEDNN_OPTS="1").stdout == "1\n"  # the user's setting wins
