"""benchmarks/train_step.py: every strategy trains the same networks to the same parameters; JSON shape."""

import json
import os
import subprocess
import sys

import jax
import numpy as np

import train_fakes  # registers the toy_conv model family
from benchmarks import train_step
from tg_jax.training import cohort as cohort_lib

del train_fakes


def _trained(strategy: str, setup, steps: int):
  runner = train_step.Runner(strategy, setup)
  for _ in range(steps):
    runner.step()
  return runner.state()


def test_every_strategy_matches_the_sequential_loop():
  setup = train_step.make_setup(3, image_size=8, batch_size=4, model_name="toy_conv")
  reference = _trained(train_step.SEQUENTIAL, setup, steps=2)
  initial = jax.tree.leaves(setup["state"].params)
  assert any(not np.allclose(a, b) for a, b in zip(initial, jax.tree.leaves(reference.params))), "nothing trained"
  for strategy in (cohort_lib.VMAP, cohort_lib.LOOP):
    state = _trained(strategy, setup, steps=2)
    for field in ("params", "batch_stats", "opt_state"):
      jax.tree.map(lambda got, want, f=field, s=strategy: np.testing.assert_allclose(
          got, want, rtol=1e-5, atol=1e-6, err_msg=f"{s} {f}"), getattr(state, field), getattr(reference, field))


def test_cli_writes_one_row_per_strategy_and_the_trainers_choice(tmp_path):
  # A fresh interpreter: the benchmark parses absl's global flags, which other test modules define too.
  out = tmp_path / "train_step.json"
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  program = ("import sys; from absl import app; import train_fakes; from benchmarks import train_step; "
             "app.run(train_step.main, argv=sys.argv)")
  subprocess.run([sys.executable, "-c", program, "--networks=1,2", "--model=toy_conv", "--image_size=8",
                  "--batch_size=4", "--steps=1", "--noisolate", f"--json={out}"], check=True, capture_output=True,
                 env={**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(tests_dir), tests_dir])})
  report = json.loads(out.read_text())
  rows = {(r["strategy"], r["networks"]) for r in report["results"]}
  assert rows == {(s, n) for s in train_step.STRATEGIES for n in (1, 2)}
  for row in report["results"]:
    assert row["net_images_per_s"] > 0 and row["step_s"] > 0, row
    np.testing.assert_allclose(row["net_images_per_s"], row["networks"] * 4 / row["step_s"], rtol=1e-3)
  assert report["chosen"] == cohort_lib.choose_parallelism(jax.default_backend(), 2) == cohort_lib.LOOP
  assert set(report["fastest_per_networks"]) == {"1", "2"}
