"""Transfer networks (Taskonomy's transfer affinity, the paper's Table 3 and Figure 3) in the trainer."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_fakes
from tg_jax import finish
from tg_jax import workdir as workdir_lib
from tg_jax.reporting import analysis
from tg_jax.reporting import transfer as transfer_report
from tg_jax.training import checkpoints
from tg_jax.training import cohort
from tg_jax.training import ensemble
from tg_jax.training import networks
from tg_jax.training import trainer
from tg_jax.training import transfer

TASKS = train_fakes.TOY_TASKS
IMAGE_SHAPE = (train_fakes.IMAGE_SIZE, train_fakes.IMAGE_SIZE, 3)


def test_transfer_networks_are_named_checked_and_grouped_into_one_cohort_per_seed():
  network = networks.parse("toy_depth:from_toy_segment#1", TASKS)
  assert (network.tasks, network.transfer_source, network.seed) == (("toy_depth",), "toy_segment", 1)
  assert network.name == "toy_depth:from_toy_segment#1"
  assert networks.parse("toy_depth", TASKS).transfer_source == ""
  with pytest.raises(ValueError, match="transfer source 'toy_edges' is not a task"):
    networks.parse("toy_depth:from_toy_edges", TASKS)
  with pytest.raises(ValueError, match="one target task other than its source"):
    networks.parse("toy_depth:from_toy_depth", TASKS)
  with pytest.raises(ValueError, match="one target task other than its source"):
    networks.parse("toy_depth+toy_normals:from_toy_segment", TASKS)
  names = transfer.network_names(TASKS)
  assert len(names) == 6 and "toy_normals:from_toy_depth" in names
  listed = [networks.parse(n, TASKS).replica(seed) for seed in (0, 1) for n in ("toy_depth",) + names]
  cohorts = networks.cohorts(listed, TASKS)
  assert [(c.method, c.seed, len(c.networks)) for c in cohorts] == [
      ("", 0, 1), ("", 1, 1), (networks.TRANSFER, 0, 6), (networks.TRANSFER, 1, 6)]
  assert cohorts[2].tasks == TASKS and cohorts[2].task_mask()[0] == [True, False, False]


def test_frozen_encoder_gets_zero_gradient_and_keeps_its_batch_statistics():
  model = train_fakes.ToyNet(TASKS, 4)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *IMAGE_SHAPE)), train=False)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.random((4, *IMAGE_SHAPE)), jnp.float32),
           "toy_depth": jnp.asarray(rng.random((4, train_fakes.IMAGE_SIZE, train_fakes.IMAGE_SIZE, 1)), jnp.float32),
           "toy_normals": jnp.asarray(rng.random((4, train_fakes.IMAGE_SIZE, train_fakes.IMAGE_SIZE, 3)), jnp.float32),
           "toy_segment": jnp.asarray(rng.integers(0, 3, (4, train_fakes.IMAGE_SIZE, train_fakes.IMAGE_SIZE)))}
  mask = jnp.asarray([True, False, False])
  gradients = cohort.frozen_encoder_gradients(model=model, task_names=TASKS)(
      variables["params"], variables["batch_stats"], mask, (), batch)
  for name in cohort.shared_parameter_names(model, IMAGE_SHAPE):
    assert all(not np.any(leaf) for leaf in jax.tree.leaves(gradients.grads[name]))
  assert np.any(gradients.grads["decoder_toy_depth"]["kernel"])
  assert not np.any(gradients.grads["decoder_toy_normals"]["kernel"])  # masked out
  assert jax.tree.all(jax.tree.map(np.array_equal, gradients.batch_stats, variables["batch_stats"]))
  # The loss is the depth decoder's on the encoder's inference-mode representation.
  representation = model.apply(variables, batch["image"], False, method=model.encode)
  output = model.apply(variables, "toy_depth", representation, True, method=model.decode)
  expected = jnp.mean(cohort.task_losses({"toy_depth": output}, batch, ("toy_depth",)))
  np.testing.assert_allclose(gradients.loss, expected, rtol=1e-6)


def test_transfer_networks_need_a_workdir_of_encoders(tmp_path):
  config = train_fakes.tiny_config()
  config.networks.extra = ("toy_depth:from_toy_normals",)
  with pytest.raises(ValueError, match="set transfer.encoders to that run's workdir"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))


def test_a_finished_workdir_from_before_the_transfer_phase_resumes_with_it_enabled(tmp_path):
  config = train_fakes.tiny_config()
  del config.transfer
  checkpoints.check_or_write_config(config, str(tmp_path))
  enabled = train_fakes.tiny_config()
  enabled.transfer.enabled = True
  enabled.transfer.affinity_csv = "taskonomy.csv"
  assert checkpoints.check_or_write_config(enabled, str(tmp_path))
  enabled.transfer.encoders = ".."  # would change what the run's networks start from
  with pytest.raises(checkpoints.ConfigMismatchError, match="transfer.encoders"):
    checkpoints.check_or_write_config(enabled, str(tmp_path))


def _config():
  config = train_fakes.tiny_config()
  config.networks.seeds = 2
  config.transfer.enabled = True
  return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A tiny two-seed run (singles, pairs, half-size singles) finished with its transfer phase."""
  workdir = str(tmp_path_factory.mktemp("transfer") / "run")
  config = _config()
  assert trainer.train_and_evaluate(config, workdir)["status"] == trainer.STATUS_COMPLETE
  assert finish.finish(config, workdir, random_samples=50) is not None
  return config, workdir_lib.Workdir(workdir)


def test_transfer_phase_trains_every_ordered_pair_per_seed_into_methods_json(finished):
  _, paths = finished
  methods = paths.transfer.read_methods()
  expected = [f"{n}{suffix}" for suffix in ("", "#1") for n in transfer.network_names(TASKS)]
  assert sorted(methods) == sorted(expected)
  for name, entry in methods.items():
    target, = entry["tasks"]
    assert list(entry["test"]) == [target] and np.isfinite(entry["test"][target])
  assert not os.path.exists(paths.transfer.table("val"))  # never the selector's candidates
  assert json.load(open(paths.transfer.config))["transfer"]["encoders"] == transfer.ENCODERS_OF_PHASE


def test_transfer_networks_keep_their_sources_encoders_bitwise_and_train_their_decoders(finished):
  config, paths = finished
  derived = transfer.derived_config(config)
  names = ["toy_depth:from_toy_normals", "toy_depth:from_toy_normals#1", "toy_segment:from_toy_depth"]
  found = ensemble.best_variables(derived, paths.transfer.path, names, IMAGE_SHAPE)
  sources = ensemble.best_variables(config, paths.path, ["toy_normals", "toy_normals#1", "toy_depth", "toy_depth#1"],
                                    IMAGE_SHAPE)
  same = lambda a, b: jax.tree.all(jax.tree.map(np.array_equal, a, b))
  for name, source in zip(names, ["toy_normals", "toy_normals#1", "toy_depth"]):
    _, variables = found[name]
    _, source_variables = sources[source]
    for collection in ("params", "batch_stats"):
      assert same(variables[collection]["encoder_conv" if collection == "params" else "encoder_norm"],
                  source_variables[collection]["encoder_conv" if collection == "params" else "encoder_norm"])
  # Seed replicas decode their own seed's source encoder, and the decoders moved from their start.
  assert not same(found[names[0]][1]["params"]["encoder_conv"], found[names[1]][1]["params"]["encoder_conv"])
  own = ensemble.best_variables(config, paths.path, ["toy_depth"], IMAGE_SHAPE)["toy_depth"][1]
  assert not same(found[names[0]][1]["params"]["decoder_toy_depth"], own["params"]["decoder_toy_depth"])


def test_report_has_table_3_and_figure_3_from_the_measured_affinities(finished):
  _, paths = finished
  text = open(paths.report).read()
  assert "## Table 3: transfer affinity" in text and "### measured (this run)" in text
  assert "## Figure 3: transfer affinity against multi-task affinity" in text
  assert os.path.exists(os.path.join(paths.figures, "figure3_transfer_vs_multitask.png"))
  study_tables = workdir_lib.load_study(paths)
  found = transfer_report.measured(study_tables.transfer, study_tables.networks, list(TASKS))
  assert found.seeds == (0, 1)
  # Entry (target, source) from the files: 1 - transfer loss / the target's own single-task loss.
  methods, run = paths.transfer.read_methods(), paths.read_run()
  single = next(n for n in run.networks if n.name == "toy_normals#1").test["toy_normals"]
  transfer_loss = methods["toy_normals:from_toy_segment#1"]["test"]["toy_normals"]
  assert found.replicates[1, 1, 2] == pytest.approx(1 - transfer_loss / single, rel=1e-12)
  assert np.all(np.isnan(np.diagonal(found.replicates, axis1=1, axis2=2)))
  r = transfer_report.correlate(found, *analysis.multitask_affinity_replicates(study_tables.test,
                                                                               study_tables.replicas[1])).r
  assert f"Pearson r = {r:+.3f}" in text


def test_finish_needs_the_main_runs_single_task_networks(tmp_path):
  config = train_fakes.tiny_config()
  config.networks.subsets = ""
  config.networks.half_size_singles = False
  config.networks.extra = ("toy_depth+toy_normals+toy_segment",)
  config.transfer.enabled = True
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(config, workdir)
  with pytest.raises(workdir_lib.WorkdirError, match="full-size single-task network.*toy_depth, toy_normals"):
    finish.finish(config, workdir, random_samples=10)
