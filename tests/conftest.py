"""Test-wide settings, applied before any test imports JAX.

Two CPU devices let tests exercise pmap and sharding; TensorFlow stays quiet and off any GPU.
``tg_jax.cache`` writes to a fresh directory per test session, so no test reads what an earlier run
(or the user's) cached.
"""

import os
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ["TG_JAX_CACHE_DIR"] = tempfile.mkdtemp(prefix="tg_jax_test_cache_")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)
