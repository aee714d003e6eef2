"""Prints JSON and a table: training speed of N task-subset networks under each step strategy.

Every strategy runs the trainer's own step, ``tg_jax.training.cohort.train_step``, on the same
networks (the first N subsets of the default tasks: singles, pairs, ..., all 31 for five tasks),
the same synthetic batch and the same optimiser as ``tg_jax.training.config.base_config``:

- ``vmap``: one jitted step, ``train_step(how="vmap")``: the networks batched into one computation.
- ``loop``: one jitted step, ``train_step(how="loop")``: ``lax.map`` over the networks inside it.
- ``sequential``: a Python loop over the networks, each stepped by the step jitted for one network
  (what the authors did: one network after another).

Each (strategy, N) runs in its own subprocess with a time limit, so a strategy that is hopelessly
slow on this machine (vmapped convolutions on CPU) is recorded as skipped instead of stalling the
run; its peak host memory (``ru_maxrss``) is then its own. Speed is ``net_images_per_s`` = networks
x batch / seconds per step (median of ``--steps`` steps after a warm-up step), so strategies and N
compare directly. ``chosen`` is what the trainer's ``network_parallelism="auto"`` picks
(``cohort.choose_parallelism``) for this backend and the largest N; ``fastest`` is what was measured.

  python benchmarks/train_step.py --json=/tmp/train_step.json
  python benchmarks/train_step.py --networks=15 --strategies=loop,sequential --dtypes=float32,bfloat16
  python benchmarks/train_step.py --scale=paper --networks=31 --peak_tflops=989   # on a GPU (H100 bf16 dense)
"""

import functools
import json
import os
import resource
import select
import statistics
import subprocess
import sys
import time
from typing import Any

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tg_jax import models
from tg_jax import tasks as tasks_lib
from tg_jax.training import cohort as cohort_lib
from tg_jax.training import config as config_lib
from tg_jax.training import networks as networks_lib

SEQUENTIAL = "sequential"
STRATEGIES = (cohort_lib.VMAP, cohort_lib.LOOP, SEQUENTIAL)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# The paper's five tasks; the benchmark needs no dataset (and so no TensorFlow), only their shapes.
_TASKS = flags.DEFINE_list("tasks", ["segment_semantic", "depth", "normals", "keypoints2d", "edges2d"],
                           "Tasks whose subsets are the networks (tg_jax.tasks registry names).")
_NETWORKS = flags.DEFINE_list("networks", ["1", "5", "15", "31"], "Numbers of networks N to train at once.")
_STRATEGIES = flags.DEFINE_list("strategies", [SEQUENTIAL, cohort_lib.LOOP, cohort_lib.VMAP], f"Strategies, from {', '.join(STRATEGIES)}.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32"], "Computation dtypes (config.half_precision), from float32, bfloat16.")
_SCALE = flags.DEFINE_enum("scale", "cpu", ["cpu", "paper"], "Model scale (models.default_config).")
_MODEL = flags.DEFINE_string("model", "xception", "Model family name (tg_jax.models registry).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 0, "Image side; 0: the scale's (32 cpu, 256 paper).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per step, the same batch for every network.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps after one warm-up step.")
_MAX_STEP_SECONDS = flags.DEFINE_float(
    "max_step_seconds", 20.0, "A strategy whose warm-up step (after compiling) takes longer is skipped.")
_TIMEOUT = flags.DEFINE_float(
    "timeout", 120.0, "Seconds a strategy may take (the first of an N: with the setup), compiling included; "
    "list fast strategies first, as the rest of that N is stopped; a strategy skipped at some N is not tried at "
    "larger N.")
_ISOLATE = flags.DEFINE_bool("isolate", True, "Measure each N in a subprocess, so a slow strategy can be stopped.")
_WORKER = flags.DEFINE_bool("worker", False, "Internal: measure one N and print one JSON row a line.")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", 0.0, "Device peak TFLOP/s for model FLOPs utilisation; 0: none.")
_JSON = flags.DEFINE_string("json", "", "Also write the JSON here.")


def make_setup(num_networks: int, scale: str = "cpu", image_size: int = 0, batch_size: int = 32,
               dtype: Any = jnp.float32, model_name: str = "xception",
               task_names: tuple[str, ...] = ("segment_semantic", "depth", "normals", "keypoints2d", "edges2d"),
               ) -> dict[str, Any]:
  """The first ``num_networks`` subsets of ``task_names`` as one cohort, its state and a batch.

  Returns a dict: ``model``, ``optimizer``, ``task_names``, ``task_mask`` ``[nets, tasks]``,
  ``state`` (``cohort.CohortState``, ``[nets, ...]``), ``batch`` (``image`` ``[b, h, w, 3]`` and one
  random label per task), ``networks`` (names).
  """
  for name in task_names:
    tasks_lib.get(name)  # an unknown name fails here, naming the known tasks
  model_config = models.default_config(scale, model_name)
  subsets = networks_lib.subsets(task_names, "all")
  if not 1 <= num_networks <= len(subsets):
    raise ValueError(f"--networks must be between 1 and {len(subsets)} (the subsets of {len(task_names)} "
                     f"tasks); got {num_networks}")
  cohort = networks_lib.cohorts([networks_lib.Network(s, 1.0) for s in subsets[:num_networks]], task_names)[0]
  model = models.build(model_config, cohort.tasks, 1.0, dtype)
  optimizer = cohort_lib.make_optimizer(config_lib.optimizer_config(), steps_per_epoch=100)
  side = image_size or model_config.cost_image_size
  image_shape = (side, side, 3)
  # Networks are initialised one at a time and stacked, as the trainer does (same values, faster compile).
  init_one = jax.jit(functools.partial(cohort_lib.init, model, optimizer, image_shape=image_shape,
                                       num_tasks=len(cohort.tasks)))
  state = cohort_lib.concatenate([init_one(jax.random.fold_in(jax.random.PRNGKey(0), i)[None])
                                  for i in range(num_networks)])
  keys = iter(jax.random.split(jax.random.PRNGKey(1), len(cohort.tasks) + 1))
  batch = {"image": jax.random.normal(next(keys), (batch_size, *image_shape), jnp.float32)}
  for name in cohort.tasks:
    task, key = tasks_lib.get(name), next(keys)
    if task.kind == tasks_lib.DENSE_REGRESSION:
      batch[name] = jax.random.normal(key, (batch_size, side, side, task.channels), jnp.float32)
    elif task.kind == tasks_lib.SEGMENTATION:
      batch[name] = jax.random.randint(key, (batch_size, side, side), 0, task.channels, jnp.int32)
    else:
      batch[name] = jax.random.randint(key, (batch_size,), 0, task.channels, jnp.int32)
  return {"model": model, "optimizer": optimizer, "task_names": cohort.tasks, "networks": [n.name for n in cohort.networks],
          "task_mask": jnp.asarray(cohort.task_mask(), jnp.bool_), "state": state, "batch": batch}


class Runner:
  """One strategy's jitted step(s) over a setup's networks; ``step()`` advances every network once."""

  def __init__(self, strategy: str, setup: dict[str, Any]):
    if strategy not in STRATEGIES:
      raise ValueError(f"unknown strategy {strategy!r}; known strategies: {', '.join(STRATEGIES)}")
    self.strategy = strategy
    self.batch = setup["batch"]
    how = cohort_lib.VMAP if strategy == SEQUENTIAL else strategy
    step_fn = functools.partial(cohort_lib.train_step, model=setup["model"], optimizer=setup["optimizer"],
                                task_names=setup["task_names"])
    # The trainer donates the state too: the old parameters' buffers are reused for the new ones.
    jitted = jax.jit(lambda state, batch, step, task_mask: step_fn(state, batch, step, task_mask=task_mask, how=how),
                     donate_argnums=0)
    num_networks = setup["task_mask"].shape[0]
    if strategy == SEQUENTIAL:  # one state and mask per network, each with a network axis of 1
      self.states = cohort_lib.split(setup["state"], [1] * num_networks)
      self.masks = [setup["task_mask"][i:i + 1] for i in range(num_networks)]
    else:
      self.states, self.masks = [setup["state"]], [setup["task_mask"]]
    # The copy keeps the setup's state alive for other strategies (donation would delete it).
    self.states = [jax.tree.map(jnp.copy, s) for s in self.states]
    start = time.perf_counter()
    lowered = jitted.lower(self.states[0], self.batch, jnp.int32(0), self.masks[0])
    self.compiled = lowered.compile()
    self.compile_seconds = time.perf_counter() - start
    self.step_count = 0

  def step(self) -> None:
    step = jnp.int32(self.step_count)
    self.states = [self.compiled(state, self.batch, step, mask)[0] for state, mask in zip(self.states, self.masks)]
    jax.block_until_ready(self.states)
    self.step_count += 1

  def state(self) -> cohort_lib.CohortState:
    """The networks' state, ``[nets, ...]``, whatever the strategy."""
    return cohort_lib.concatenate(self.states)

  def memory_bytes(self) -> dict[str, int]:
    """XLA's memory analysis of one compiled step (for ``sequential``, the one-network step)."""
    analysis = self.compiled.memory_analysis()
    if analysis is None:
      return {}
    return {"step_argument_bytes": int(analysis.argument_size_in_bytes),
            "step_output_bytes": int(analysis.output_size_in_bytes),
            "step_temp_bytes": int(analysis.temp_size_in_bytes)}


def network_step_flops(setup: dict[str, Any]) -> float:
  """FLOPs of one network's training step (XLA's cost analysis of the one-network step)."""
  one = jax.tree.map(lambda leaf: leaf[:1], setup["state"])
  step_fn = functools.partial(cohort_lib.train_step, model=setup["model"], optimizer=setup["optimizer"],
                              task_names=setup["task_names"])
  lowered = jax.jit(lambda s, b, t, m: step_fn(s, b, t, task_mask=m)).lower(
      one, setup["batch"], jnp.int32(0), setup["task_mask"][:1])
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def measure(strategy: str, setup: dict[str, Any], *, dtype_name: str, scale: str, model_name: str, steps: int,
            max_step_seconds: float, peak_tflops: float) -> dict[str, Any]:
  """One result row: speed, compile time, memory (and FLOPs utilisation) of ``strategy`` on a setup."""
  num_networks, batch_size = setup["task_mask"].shape[0], setup["batch"]["image"].shape[0]
  row = {"strategy": strategy, "networks": num_networks, "dtype": dtype_name, "scale": scale, "model": model_name,
         "image_size": setup["batch"]["image"].shape[1], "batch_size": batch_size}
  runner = Runner(strategy, setup)
  row["compile_s"] = round(runner.compile_seconds, 3)
  start = time.perf_counter()
  runner.step()
  warmup = time.perf_counter() - start
  if warmup > max_step_seconds:
    row["skipped"] = f"too slow: first step took {warmup:.1f} s (> --max_step_seconds={max_step_seconds:g})"
    return row
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    runner.step()
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  row.update({"step_s": seconds, "steps_timed": steps,
              "net_images_per_s": round(num_networks * batch_size / seconds, 1),
              "s_per_network_step": seconds / num_networks})
  row.update(runner.memory_bytes())
  row["peak_host_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  device = jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    row["peak_device_bytes"] = int(stats["peak_bytes_in_use"])
  flops = network_step_flops(setup) * num_networks
  row["model_tflops_per_s"] = round(flops / seconds / 1e12, 4)
  if peak_tflops:
    row["mfu"] = round(flops / seconds / (peak_tflops * 1e12), 4)
  return row


def _measure_all(num_networks: int, dtype_name: str, strategies: list[str]):
  """Yields one row per strategy, all on one setup (one initialisation for all strategies)."""
  setup = make_setup(num_networks, _SCALE.value, _IMAGE_SIZE.value, _BATCH_SIZE.value, DTYPES[dtype_name],
                     _MODEL.value, tuple(_TASKS.value))
  for strategy in strategies:
    yield measure(strategy, setup, dtype_name=dtype_name, scale=_SCALE.value, model_name=_MODEL.value,
                  steps=_STEPS.value, max_step_seconds=_MAX_STEP_SECONDS.value, peak_tflops=_PEAK_TFLOPS.value)


def _measure_in_subprocess(num_networks: int, dtype_name: str, strategies: list[str]) -> list[dict[str, Any]]:
  """Rows of a worker subprocess that prints one JSON row a line; a strategy without a row within
  ``--timeout`` seconds of the previous one (the first: of the start) stops the worker."""
  command = [sys.executable, os.path.abspath(__file__), f"--networks={num_networks}",
             f"--strategies={','.join(strategies)}", f"--dtypes={dtype_name}", f"--scale={_SCALE.value}",
             f"--model={_MODEL.value}", f"--image_size={_IMAGE_SIZE.value}", f"--batch_size={_BATCH_SIZE.value}",
             f"--steps={_STEPS.value}", f"--max_step_seconds={_MAX_STEP_SECONDS.value}",
             f"--peak_tflops={_PEAK_TFLOPS.value}", f"--tasks={','.join(_TASKS.value)}", "--worker"]
  worker = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  rows = []
  try:
    for strategy in strategies:
      ready, _, _ = select.select([worker.stdout], [], [], _TIMEOUT.value)
      line = worker.stdout.readline() if ready else ""
      if not line:
        reason = (f"too slow: no result within --timeout={_TIMEOUT.value:g} s (compiling and the first step)"
                  if not ready else f"worker exited with {worker.wait()} before measuring it")
        rows.append({"strategy": strategy, "networks": num_networks, "dtype": dtype_name, "scale": _SCALE.value,
                     "skipped": reason})
        break
      rows.append(json.loads(line))
      print(_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
  finally:
    if worker.poll() is None:
      worker.kill()
    worker.wait()
  return rows


def _table(results: list[dict[str, Any]]) -> str:
  lines = [f"{'strategy':<11} {'dtype':<9} {'N':>3} {'net-img/s':>10} {'s/step':>8} {'s/net-step':>10} "
           f"{'compile s':>9} {'temp MiB':>8} {'RSS MiB':>8}  note"]
  for row in results:
    if "net_images_per_s" in row:
      lines.append(f"{row['strategy']:<11} {row['dtype']:<9} {row['networks']:>3} {row['net_images_per_s']:>10.1f} "
                   f"{row['step_s']:>8.3f} {row['s_per_network_step']:>10.4f} {row['compile_s']:>9.1f} "
                   f"{row.get('step_temp_bytes', 0) / 2**20:>8.1f} {row['peak_host_rss_bytes'] / 2**20:>8.0f}"
                   + (f"  MFU {row['mfu']:.1%}" if "mfu" in row else ""))
    else:
      lines.append(f"{row['strategy']:<11} {row['dtype']:<9} {row['networks']:>3} {'-':>10} {'-':>8} {'-':>10} "
                   f"{'-':>9} {'-':>8} {'-':>8}  {row.get('skipped') or row.get('error')}")
  return "\n".join(lines)


def fastest(results: list[dict[str, Any]], num_networks: int) -> str | None:
  """The float32 strategy with the most network-images per second at ``num_networks``."""
  measured = [r for r in results if r["networks"] == num_networks and r["dtype"] == "float32"
              and "net_images_per_s" in r]
  return max(measured, key=lambda r: r["net_images_per_s"])["strategy"] if measured else None


def main(argv):
  del argv
  counts = [int(n) for n in _NETWORKS.value]
  for name in _STRATEGIES.value:
    if name not in STRATEGIES:
      raise app.UsageError(f"unknown strategy {name!r}; known strategies: {', '.join(STRATEGIES)}")
  for name in _DTYPES.value:
    if name not in DTYPES:
      raise app.UsageError(f"unknown dtype {name!r}; use float32 or bfloat16")
  if _WORKER.value:
    for row in _measure_all(counts[0], _DTYPES.value[0], _STRATEGIES.value):
      print(json.dumps(row), flush=True)
    return
  results = []
  too_slow: dict[tuple[str, str], int] = {}  # (strategy, dtype) -> the N at which it was skipped
  for num_networks in counts:
    for dtype_name in _DTYPES.value:
      to_run = [s for s in _STRATEGIES.value if (s, dtype_name) not in too_slow]
      rows = (_measure_in_subprocess(num_networks, dtype_name, to_run) if _ISOLATE.value
              else list(_measure_all(num_networks, dtype_name, to_run)))
      measured = {row["strategy"] for row in rows}
      rows += [{"strategy": s, "networks": num_networks, "dtype": dtype_name, "scale": _SCALE.value,
                "skipped": (f"too slow: skipped at N={too_slow[s, dtype_name]}, so not tried at larger N"
                            if (s, dtype_name) in too_slow else "not run: an earlier strategy's worker was stopped")}
               for s in _STRATEGIES.value if s not in measured]
      for row in rows:
        if "skipped" in row and row["skipped"].startswith("too slow"):
          too_slow.setdefault((row["strategy"], dtype_name), num_networks)
      results += sorted(rows, key=lambda r: _STRATEGIES.value.index(r["strategy"]))
  backend = jax.default_backend()
  largest = max(counts)
  report = {"backend": backend, "device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "results": results,
            "chosen": cohort_lib.choose_parallelism(backend, largest),
            "chosen_per_networks": {str(n): cohort_lib.choose_parallelism(backend, n) for n in counts},
            "fastest_per_networks": {str(n): fastest(results, n) for n in counts}}
  text = json.dumps(report, indent=1)
  print(text)
  if _ISOLATE.value:
    print(_table(results), file=sys.stderr)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  app.run(main)
