"""Tests for tg_jax.cache: where caches live, and that cached encoder costs are the measured ones."""

import json
import os

import jax.numpy as jnp
import pytest

from tg_jax import cache
from tg_jax import models
from tg_jax.models import cost


def test_directory_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
  assert cache.directory() == str(tmp_path)
  monkeypatch.setenv(cache.ENV_VAR, "")
  assert cache.directory() is None
  cache.store_json("anything", "key", 1.0)  # caching off: nothing is written, nothing is read
  assert cache.load_json("anything") == {}
  monkeypatch.delenv(cache.ENV_VAR)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert cache.directory() == str(tmp_path / "xdg" / "tg_jax")


def test_json_store_merges_and_survives_damage(monkeypatch, tmp_path):
  monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
  cache.store_json("things", "a", 1.5)
  cache.store_json("things", "b", [1, 2])
  assert cache.load_json("things") == {"a": 1.5, "b": [1, 2]}
  (tmp_path / "things.json").write_text("{not json")
  assert cache.load_json("things") == {}
  cache.store_json("things", "c", 3.0)
  assert json.loads((tmp_path / "things.json").read_text()) == {"c": 3.0}


def _clear_memory_caches():
  cost._module_flops.cache_clear()
  cost._search_multiplier.cache_clear()


@pytest.mark.parametrize("size", [0.2, 0.5])
def test_cached_cost_equals_a_fresh_measurement(monkeypatch, tmp_path, size):
  config = models.default_config()
  monkeypatch.setenv(cache.ENV_VAR, "")  # no cache: measured
  _clear_memory_caches()
  fresh = (models.width_multiplier(config, size), models.encoder_cost(config, size))

  monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
  _clear_memory_caches()
  first = (models.width_multiplier(config, size), models.encoder_cost(config, size))  # measures, writes
  stored = cache.load_json(cost.FLOPS_CACHE)
  assert stored and all(isinstance(v, float) for v in stored.values())

  _clear_memory_caches()
  calls = []
  monkeypatch.setattr(cost, "encoder_flops", lambda *args: calls.append(args))
  from_disk = (models.width_multiplier(config, size), models.encoder_cost(config, size))
  assert not calls, "a cached run compiles no encoder"
  assert first == fresh and from_disk == fresh  # bitwise
  net = models.registry.get(config.name).make(config, (), from_disk[0], jnp.float32)
  monkeypatch.undo()
  assert stored[cost.flops_cache_key(net, (32, 32, 3))] == models.encoder_flops(net, (32, 32, 3))
  _clear_memory_caches()


def test_cache_key_names_what_the_measurement_depends_on():
  config = models.default_config()
  make = models.registry.get(config.name).make
  key = cost.flops_cache_key(make(config, (), 0.5, jnp.float32), (32, 32, 3))
  assert key != cost.flops_cache_key(make(config, (), 1.0, jnp.float32), (32, 32, 3))  # widths
  assert key != cost.flops_cache_key(make(config, (), 0.5, jnp.float32), (64, 64, 3))  # image shape
  for part in ("xception.XceptionNet@", "encoder_widths", "jax=", "jaxlib=", "flax="):
    assert part in key


def test_compilation_cache_directory_is_per_instruction_set(monkeypatch, tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
  previous = jax.config.jax_compilation_cache_dir
  try:
    jax.config.update("jax_compilation_cache_dir", None)
    path = cache.enable_compilation_cache()
    assert path.startswith(os.path.join(str(tmp_path), "xla", "cpu-"))
    assert jax.config.jax_compilation_cache_dir == path
    assert cache.enable_compilation_cache() == path  # a directory already set wins
  finally:
    jax.config.update("jax_compilation_cache_dir", previous)
