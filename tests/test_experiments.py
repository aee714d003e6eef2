"""Experiment configs load with every variant and select the networks their names promise."""

import pytest
from ml_collections import config_flags  # noqa: F401  (the configs are what --config loads)

from tg_jax.training import config as config_lib
from tg_jax.training import networks


def _load(name, variant):
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location(name, f"experiments/{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


@pytest.mark.parametrize("name, variant, count, predict", [
    ("pairs", "", 5 + 10 + 5, "hoa"), ("pairs", "full", 20, "hoa"),
    ("all_subsets", "", 31 + 5, "none"), ("all_subsets", "full", 36, "none"),
    ("esa", "", 36, "esa"), ("esa", "full", 36, "esa"),
])
def test_configs_validate_and_list_their_networks(monkeypatch, name, variant, count, predict):
  monkeypatch.chdir(config_lib.__file__.rsplit("/tg_jax/", 1)[0])
  config = _load(name, variant)
  config_lib.validate(config)
  assert len(networks.from_config(config)) == count
  assert config.selection.predict == predict
  assert len(config.tasks) == 5
  if name == "esa":
    assert config.stop_fraction == config.esa_fraction < 1


def test_unknown_variant_is_refused(monkeypatch):
  monkeypatch.chdir(config_lib.__file__.rsplit("/tg_jax/", 1)[0])
  with pytest.raises(ValueError, match="unknown variant 'gpu'"):
    _load("pairs", "gpu")
