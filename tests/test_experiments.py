"""Experiment configs load with every variant, select the networks their names promise, and are
self-contained files over the shared presets (``tg_jax.training.config.base_config``)."""

import ast
import os

import pytest

from tg_jax import data
from tg_jax import models
from tg_jax import records
from tg_jax.training import config as config_lib
from tg_jax.training import networks

EXPERIMENTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
SETTINGS = ("setting2_larger_network", "setting3_less_data", "setting4_alternative_tasks")
EXPERIMENTS = ("pairs", "all_subsets", "esa", "study", "methods", "transfer", "data_size", "helper_tasks") + SETTINGS


def _load(name, variant):
  return config_lib.load_experiment(EXPERIMENTS_DIR, name).get_config(variant)


@pytest.mark.parametrize("name, variant, count, predict", [
    ("pairs", "", 2 * (5 + 10 + 5), "hoa"), ("pairs", "full", 40, "hoa"),
    ("all_subsets", "", 31 + 5, "none"), ("all_subsets", "full", 36, "none"),
    ("esa", "", 36, "esa"), ("esa", "full", 36, "esa"),
    ("study", "", 3 * (31 + 5 + 6 * 5 + 1 + 2 * 5), "none"), ("study", "full", 3 * (31 + 5 + 6 * 5 + 1 + 2 * 5), "none"),
    # Every group and half-size single, the all-task network with 16 balancing methods (all but :equal,
    # the groups' own all-task network), soft sharing and 3 architectures; 3 seeds each.
    ("methods", "", 3 * (31 + 5 + 16 + 1 + 3), "none"), ("methods", "full", 168, "none"),
    ("transfer", "", 2 * (5 + 10 + 5), "hoa"), ("transfer", "full", 40, "hoa"),
    *[(name, variant, 2 * (31 + 5), "none") for name in SETTINGS for variant in ("", "full")],
    ("data_size", "", 3 * (5 + 10 + 1), "none"), ("data_size", "full", 3 * (5 + 10 + 1), "none"),
    # What HOA needs for the five served tasks, and each of them with each of the two helpers.
    ("helper_tasks", "", 2 * (5 + 10 + 5 + 5 * 2), "hoa"), ("helper_tasks", "full", 60, "hoa"),
])
def test_configs_validate_and_list_their_networks(name, variant, count, predict):
  config = _load(name, variant)
  config_lib.validate(config)
  assert len(networks.from_config(config)) == count  # every seed replica is a network
  assert config.selection.predict == predict
  assert len(config_lib.served_tasks(config)) == 5
  if name == "esa":
    assert config.stop_fraction == config.esa_fraction < 1
  # The transfer phase (after the main run) needs every task's full-size single-task network.
  assert config.transfer.enabled == (name in ("transfer", "study"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_cpu_is_the_default_variant(name):
  assert _load(name, "").to_dict() == _load(name, "cpu").to_dict()


def test_presets():
  cpu, full = config_lib.base_config("cpu"), config_lib.base_config("full")
  # The CPU preset's network is the model family's "cpu" preset, the full one the paper's.
  assert cpu.model.to_dict() == models.default_config("cpu").to_dict()
  assert full.model.to_dict() == models.default_config("paper").to_dict()
  assert cpu.model.cost_image_size == cpu.data.image_size == 32
  assert full.model.cost_image_size == full.data.image_size == 256
  # 12 epochs of 5% of the 4000 training images at batch 8: 300 steps, an epoch every 25.
  assert (cpu.batch_size, cpu.eval_batch_size, cpu.num_epochs, cpu.log_every_steps) == (8, 100, 12, 5)
  assert cpu.epoch_fraction == 0.05 and full.epoch_fraction == 0.2
  train_images = cpu.data.num_train_scenes * cpu.data.views_per_scene
  assert cpu.epoch_fraction * train_images / cpu.batch_size == 25
  assert (cpu.optimizer.learning_rate, cpu.optimizer.plateau_patience, cpu.half_precision) == (0.1, 1, False)
  # The paper's: batch 64, 50 epochs, learning rate 0.2 halved after 2 epochs without improvement.
  assert (full.batch_size, full.eval_batch_size, full.num_epochs, full.log_every_steps) == (64, 128, 50, 100)
  assert (full.optimizer.learning_rate, full.optimizer.plateau_patience, full.half_precision) == (0.2, 2, True)
  assert config_lib.base_config("").to_dict() == cpu.to_dict()


def test_the_demo_and_the_study_train_seed_replicas():
  """Every number of their reports needs an interval over seeds; the study's Table 1 needs 3+."""
  assert _load("pairs", "").networks.seeds == 2
  assert _load("study", "").networks.seeds >= 3
  assert _load("methods", "").networks.seeds >= 3


def test_the_methods_study_trains_every_method_and_architecture_on_all_tasks():
  config = _load("methods", "")
  methods = {n.method for n in networks.from_config(config) if len(n.tasks) == len(config.tasks)}
  # The paper's equal weights ("") once, as the groups' all-task network, not again as ":equal".
  assert methods == {""} | set(networks.methods()) - {"equal"}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_unknown_variant_is_refused_naming_the_known_ones(name):
  with pytest.raises(ValueError, match=r"unknown variant 'gpu'; known variants: cpu .*, full"):
    _load(name, "gpu")
  with pytest.raises(ValueError, match="unknown variant 'gpu'"):
    config_lib.base_config("gpu")


def _assigned_keys(tree):
  """Dotted config keys an experiment file assigns (``config.networks.subsets = ...`` ->
  ``networks.subsets``)."""
  keys = []
  for node in ast.walk(tree):
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) else []
    for target in targets:
      parts = []
      while isinstance(target, ast.Attribute):
        parts.insert(0, target.attr)
        target = target.value
      if isinstance(target, ast.Name) and target.id == "config" and parts:
        keys.append(".".join(parts))
  return keys


def _get(config, key):
  for part in key.split("."):
    config = config[part]
  return config.to_dict() if hasattr(config, "to_dict") else config


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiments_stand_alone_over_the_presets_and_restate_no_default(name):
  with open(os.path.join(EXPERIMENTS_DIR, f"{name}.py")) as f:
    source = f.read()
  tree = ast.parse(source)
  # No experiment loads another by path: each reads on its own over base_config.
  assert "load_experiment" not in source and "importlib" not in source
  imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
              for alias in node.names}
  assert not imported & set(EXPERIMENTS), imported
  # Every key an experiment sets differs from the preset in some variant.
  for key in _assigned_keys(tree):
    assert any(_get(_load(name, v), key) != _get(config_lib.base_config(v), key) for v in config_lib.VARIANTS), \
        f"experiments/{name}.py sets {key} to the preset's value; leave it out"


def test_data_directories_can_be_set_on_the_command_line():
  # They default to None, which config_flags cannot override unless the field is typed.
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  argv = ["main", f"--config={os.path.join(EXPERIMENTS_DIR, 'pairs.py')}:full",
          "--config.data.data_dir=/scratch/tfds", "--config.data.manual_dir=/data/taskonomy"]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  config = flag_values.config
  assert (config.data.data_dir, config.data.manual_dir, config.data.image_size) == ("/scratch/tfds", "/data/taskonomy", 256)
  assert config_lib.base_config().data.data_dir is None


@pytest.mark.parametrize("predict", ["none", "esa", "hoa", "surrogate", "tag", "tag_cosine"])
def test_every_predictor_is_a_valid_selection_predict(predict):
  config = _load("pairs", "")
  config.selection.predict = predict
  config_lib.validate(config)


def test_an_unknown_selection_predict_names_the_choices():
  config = _load("pairs", "")
  config.selection.predict = "mtg"
  with pytest.raises(ValueError, match="none, esa, hoa, surrogate, tag, tag_cosine"):
    config_lib.validate(config)


@pytest.mark.parametrize("rounds", [-1, True])
def test_selection_refine_must_be_a_count_of_rounds(rounds):
  config = _load("esa", "")
  config.selection.refine = rounds
  with pytest.raises(ValueError, match="selection.refine must be a count of rounds >= 0"):
    config_lib.validate(config)


@pytest.mark.parametrize("variant", ["cpu", "full"])
def test_the_other_settings_differ_from_setting_1_in_one_thing_each(variant):
  base = config_lib.base_config(variant)
  larger, less_data, other_tasks = (_load(name, variant) for name in SETTINGS)
  # Setting 2: a wider encoder, the data and tasks of setting 1.
  assert all(l > b for l, b in zip(larger.model.encoder_widths, base.model.encoder_widths))
  assert larger.data.to_dict() == base.data.to_dict() and larger.tasks == base.tasks
  # Setting 3: a fifth of the training scenes, the same steps and validation period.
  assert less_data.data.num_train_scenes * 5 == base.data.num_train_scenes
  steps = lambda config: records.Schedule.from_config(config, 2 * config.data.num_train_scenes)
  assert steps(less_data) == steps(base)
  assert less_data.model.to_dict() == base.model.to_dict()
  # Setting 4: the authors' other five tasks (normals kept), all rendered by the embedded dataset.
  assert set(other_tasks.tasks) == {"normals", "edges3d", "reshading", "curvature", "autoencoder"}
  assert set(other_tasks.tasks) <= set(data.dataset_tasks(other_tasks.data.name))


@pytest.mark.parametrize("variant", ["", "full"])
def test_data_size_trains_as_many_steps_at_every_training_set_size(variant):
  """A smaller training set is seen more often, not trained for fewer steps."""
  schedules = []
  for scenes in (500, 1000, 2000, 4000):
    config = _load("data_size", variant)
    config.data.num_train_scenes = scenes
    config_lib.validate(config)
    schedules.append(records.Schedule.from_config(config, scenes * config.data.views_per_scene))
  assert len({(s.steps_per_epoch, s.total_steps) for s in schedules}) == 1
  base = config_lib.base_config(variant)
  assert schedules[2].total_steps == records.Schedule.from_config(base, 4000).total_steps  # the preset's at 2000 scenes


def test_helper_tasks_train_with_the_served_ones_and_never_alone():
  config = _load("helper_tasks", "")
  helpers = set(config.selection.helper_tasks)
  assert helpers and helpers <= set(config.tasks)
  listed = networks.from_config(config)
  assert all(set(n.tasks) - helpers for n in listed)  # every network serves a task
  with_helper = [n for n in listed if set(n.tasks) & helpers]
  assert all(len(n.tasks) == 2 and n.size == 1.0 for n in with_helper)


@pytest.mark.parametrize("helpers, message", [
    (("edges3dd",), r"selection.helper_tasks names \['edges3dd'\], not in config.tasks"),
    (("edges3d", "edges3d"), "names a task twice"),
    (("segment_semantic", "depth", "normals", "keypoints2d", "edges2d", "edges3d", "curvature"),
     "names every task of config.tasks; leave at least one task to serve"),
])
def test_helper_task_errors_name_the_fix(helpers, message):
  config = _load("helper_tasks", "")
  config.selection.helper_tasks = helpers
  with pytest.raises(ValueError, match=message):
    config_lib.validate(config)


def test_helper_tasks_refuse_the_trained_adaptive_loop():
  config = _load("helper_tasks", "")
  config.selection.adaptive.trainings = 10.0
  with pytest.raises(ValueError, match="selection.adaptive grows groups of served tasks and takes no helper tasks"):
    config_lib.validate(config)
