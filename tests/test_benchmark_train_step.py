"""benchmarks/train_step.py: every strategy trains the same networks to the same parameters; JSON shape;
the PyTorch port has the JAX model's parameters."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_fakes  # registers the toy_conv model family
from benchmarks import train_step
from tg_jax import models
from tg_jax.training import cohort as cohort_lib

del train_fakes


def _trained(strategy: str, setup, steps: int):
  runner = train_step.make_runner(strategy, setup)
  for _ in range(steps):
    runner.step()
  return runner


def test_every_cohort_strategy_matches_the_sequential_loop():
  setup = train_step.make_setup(3, image_size=8, batch_size=4, model_name="toy_conv")
  reference = _trained(train_step.SEQUENTIAL_MASKED, setup, steps=2).state()
  initial = jax.tree.leaves(setup["state"].params)
  assert any(not np.allclose(a, b) for a, b in zip(initial, jax.tree.leaves(reference.params))), "nothing trained"
  for strategy, networks_per_step in ((cohort_lib.VMAP, 0), (cohort_lib.LOOP, 0), (cohort_lib.VMAP, 2)):
    runner = train_step.make_runner(strategy, setup, networks_per_step)
    assert [m.shape[0] for m in runner.masks] == ([3] if networks_per_step == 0 else [2, 1])
    for _ in range(2):
      runner.step()
    state = runner.state()
    for field in ("params", "batch_stats", "opt_state"):
      jax.tree.map(lambda got, want, f=field, s=strategy: np.testing.assert_allclose(
          got, want, rtol=1e-5, atol=1e-6, err_msg=f"{s} {f}"), getattr(state, field), getattr(reference, field))


def test_chunk_sizes_are_as_even_as_possible():
  assert train_step.chunk_sizes(31, 0) == [31]
  assert train_step.chunk_sizes(31, 8) == [8, 8, 8, 7]
  assert train_step.chunk_sizes(5, 2) == [2, 2, 1]
  assert train_step.chunk_sizes(4, 1) == [1, 1, 1, 1]


def test_own_decoder_networks_train_like_their_part_of_the_cohort_model():
  # toy_depth and depth are both 1-channel regressions: they share one compiled step, each with its own labels.
  task_names = ("toy_depth", "depth", "toy_normals")
  setup = train_step.make_setup(3, image_size=8, batch_size=4, model_name="toy_conv", task_names=task_names)
  runner = _trained(train_step.SEQUENTIAL_OWN, setup, steps=2)
  assert runner.num_programs == 2
  cohort = jax.device_get(_trained(train_step.SEQUENTIAL_MASKED, setup, steps=2).state())
  for index, (subset, own) in enumerate(zip(setup["subsets"], runner.states())):
    assert len(own.params) == 3, own.params.keys()  # encoder_conv, encoder_norm and one decoder
    want = train_step.own_leaves(cohort, index, subset, task_names)
    assert len(want) == len(jax.tree.leaves(own))
    for got, expected in zip(jax.tree.leaves(own), want):
      np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=str(subset))
  initial = jax.tree.leaves(setup["state"].params)
  assert any(not np.allclose(a, b) for a, b in zip(initial, jax.tree.leaves(cohort.params))), "nothing trained"


def test_model_flops_count_only_each_networks_own_decoders():
  setup = train_step.make_setup(3, image_size=8, batch_size=4, model_name="toy_conv",
                                task_names=("toy_depth", "depth", "toy_normals"))
  programs = train_step.own_programs(setup)
  one_channel, three_channels = (programs[train_step.program_key((t,))]["flops"] for t in ("depth", "toy_normals"))
  assert 0 < one_channel < three_channels
  assert train_step.model_flops(setup) == pytest.approx(2 * one_channel + three_channels)


def test_cli_writes_one_row_per_strategy_and_the_trainers_choice(tmp_path):
  # A fresh interpreter: the benchmark parses absl's global flags, which other test modules define too.
  out = tmp_path / "train_step.json"
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  program = ("import sys; from absl import app; import train_fakes; from benchmarks import train_step; "
             "app.run(train_step.main, argv=sys.argv)")
  subprocess.run([sys.executable, "-c", program, "--networks=2", "--model=toy_conv", "--image_size=8",
                  "--batch_size=4,2", "--strategies=sequential_own,loop,torch_sequential", "--steps=1", "--noisolate", "--peak_tflops=1", f"--json={out}"], check=True,
                 capture_output=True,
                 env={**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(tests_dir), tests_dir])})
  report = json.loads(out.read_text())
  rows = {(r["strategy"], r["networks"], r["batch_size"]): r for r in report["results"]}
  strategies = (train_step.SEQUENTIAL_OWN, cohort_lib.LOOP, train_step.TORCH_SEQUENTIAL)
  assert set(rows) == {(s, n, b) for s in strategies for n in (2,) for b in (4, 2)}
  for (strategy, _, batch_size), row in rows.items():
    if strategy == train_step.TORCH_SEQUENTIAL:  # the PyTorch port is of xception only
      assert row["skipped"] == train_step.torch_skip_reason("toy_conv"), row
      continue
    assert row["net_images_per_s"] > 0 and row["step_s"] > 0, row
    np.testing.assert_allclose(row["net_images_per_s"], row["networks"] * batch_size / row["step_s"], rtol=1e-3)
    assert row["model_flops_per_step"] > 0 and row["mfu"] > 0, row
  assert report["chosen"] == cohort_lib.choose_parallelism(jax.default_backend(), 2) == cohort_lib.LOOP
  assert report["fastest_per_networks"]["2"] in strategies
  speedup = next(s for s in report["speedups"] if (s["networks"], s["batch_size"]) == (2, 4))
  assert speedup["speedup_vs_sequential_own"] == pytest.approx(
      rows["loop", 2, 4]["net_images_per_s"] / rows["sequential_own", 2, 4]["net_images_per_s"], rel=1e-2)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed (CI has none)")
def test_torch_port_has_the_jax_models_parameters_and_trains():
  from benchmarks import torch_xception  # pylint: disable=import-outside-toplevel
  for scale, tasks, size in (("cpu", ("segment_semantic", "depth", "normals"), 1.0), ("cpu", ("normals",), 0.5),
                             ("paper", ("depth", "smiling"), 1.0)):
    config = models.default_config(scale)
    net = models.build(config, tasks, size)
    side = config.cost_image_size
    variables = jax.eval_shape(lambda n=net, s=side: n.init(jax.random.PRNGKey(0), jnp.zeros((1, s, s, 3)),
                                                            train=False))
    count = lambda tree: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
    port = torch_xception.like(net)
    assert sum(p.numel() for p in port.parameters()) == count(variables["params"]), (scale, tasks, size)
    running = sum(b.numel() for name, b in port.named_buffers() if "running_" in name)
    assert running == count(variables["batch_stats"]), (scale, tasks, size)

  spec = train_step.make_spec(3, image_size=16, batch_size=2)
  runner = train_step.make_runner(train_step.TORCH_SEQUENTIAL, spec)
  assert [n.tasks for _, n, _ in runner.networks] == spec["subsets"] == [("segment_semantic",), ("depth",), ("normals",)]
  before = [p.detach().clone() for _, n, _ in runner.networks for p in n.parameters()]
  runner.step()
  after = [p.detach() for _, n, _ in runner.networks for p in n.parameters()]
  assert all(not np.allclose(a.numpy(), b.numpy()) for a, b in zip(before, after) if a.ndim == 4), "a network did not train"


def test_a_strategy_that_times_out_costs_only_its_own_row():
  # Fake workers: each prints a row per strategy it is given, but hangs on "slow" (as sequential_masked
  # did on a busy machine); the strategies after it must still be measured, by a fresh worker.
  program = ("import json, sys, time\n"
             "for strategy in sys.argv[1].split(','):\n"
             "  if strategy == 'slow':\n"
             "    time.sleep(60)\n"
             "  print(json.dumps({'strategy': strategy, 'dtype': 'float32', 'networks': 2}), flush=True)\n")
  started = []

  def start(strategies, stderr):
    started.append(list(strategies))
    return subprocess.Popen([sys.executable, "-c", program, ",".join(strategies)], stdout=subprocess.PIPE,
                            stderr=stderr, text=True)

  rows = train_step.run_workers(["fast", "slow", "loop", "vmap"], start, lambda strategy: 2.0,
                                lambda strategy, reason: {"strategy": strategy, "skipped": reason})
  assert all(r["dtype"] == "float32" for r in rows if "skipped" not in r)
  assert [r["strategy"] for r in rows] == ["fast", "slow", "loop", "vmap"]
  assert rows[1]["skipped"].startswith("too slow") and all("skipped" not in rows[i] for i in (0, 2, 3))
  assert started == [["fast", "slow", "loop", "vmap"], ["loop", "vmap"]]


def test_a_worker_that_dies_names_its_last_error():
  # As XLA's GPU compiler did on a failed check: glog's fatal line, then an abort.
  program = ("import os, sys\n"
             "print('W1130 23:01:02.41 dispatch.py:204] Finished tracing', file=sys.stderr)\n"
             "print('F1130 23:02:11.17 3001 tiling.cc:703] Check failed: a == b (4096 vs. 128)', file=sys.stderr)\n"
             "sys.stderr.flush()\n"
             "os.abort()\n")

  def start(strategies, stderr):
    return subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=stderr, text=True)

  rows = train_step.run_workers(["vmap"], start, lambda strategy: 30.0,
                                lambda strategy, reason: {"strategy": strategy, "skipped": reason})
  assert rows[0]["skipped"].startswith("worker exited with -6 before measuring it: F1130")
  assert rows[0]["skipped"].endswith("Check failed: a == b (4096 vs. 128)")
