"""Prints JSON and a table: training speed of N task-subset networks under each step strategy.

The networks are the first N subsets of ``--tasks`` (singles, pairs, ..., all 31 for five tasks),
trained on one synthetic batch with the optimiser of ``tg_jax.training.config.base_config``:

- ``sequential_own``: the authors' setup and the baseline to beat. A Python loop over the networks,
  each built with only its own tasks' decoders and stepped by ``cohort.train_step`` jitted for that
  one network. Networks whose tasks have the same kinds and channels (``depth`` and ``edges2d``)
  run the same computation, so they share one compiled step; the distinct steps compile in parallel.
- ``sequential_masked``: the same loop over the trainer's cohort model: every network carries the
  decoders of all the cohort's tasks and trains only its own (the others are computed and masked).
- ``loop``: the trainer's ``network_parallelism="loop"``: one jitted step, ``lax.map`` over the
  networks inside it (cohort model).
- ``vmap``: the trainer's ``network_parallelism="vmap"``: one jitted step, the networks vmapped
  (per-network convolutions become grouped convolutions; cohort model).
- ``torch_sequential``: the same architecture in PyTorch (``benchmarks/torch_xception.py``), network
  after network with its own decoders, SGD with momentum, as the authors trained; on CUDA with
  channels-last tensors, ``cudnn.benchmark`` and bfloat16 autocast for ``--dtypes=bfloat16``. The
  row says ``skipped: torch not installed`` where torch is missing (tg_jax does not depend on it).

Each (N, dtype, batch size) runs in worker subprocesses (one for the JAX strategies, one for PyTorch)
with a time limit, so a strategy that is hopelessly slow on this machine (vmapped convolutions on
CPU) is recorded as skipped instead of stalling the run; its peak host memory (``ru_maxrss``) is
then its own. Speed is ``net_images_per_s`` = networks x batch / seconds per step (median of
``--steps`` steps after a warm-up step; a step advances every network once), so rows compare
directly. With ``--peak_tflops``, ``model_tflops_per_s`` and ``mfu`` count the FLOPs of the
networks' own steps (XLA's cost analysis of each ``sequential_own`` step), the useful work, for every
strategy: a strategy that also computes masked decoders gets no credit for them.

``chosen`` is what the trainer's ``network_parallelism="auto"`` picks (``cohort.choose_parallelism``)
for this backend and the largest N; ``fastest_per_networks`` is what was measured.

  python benchmarks/train_step.py --json=/tmp/train_step.json        # CPU: N = 1, 5, 15, ~3 minutes
  python benchmarks/train_step.py --networks=15 --strategies=loop,sequential_own --dtypes=float32,bfloat16
  python benchmarks/train_step.py --scale=paper --networks=31 --peak_tflops=989   # on a GPU (H100 bf16 dense)
"""

import concurrent.futures
import functools
import importlib.util
import json
import os
import re
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
from typing import IO, Any, Callable

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

SEQUENTIAL_OWN = "sequential_own"
SEQUENTIAL_MASKED = "sequential_masked"
TORCH_SEQUENTIAL = "torch_sequential"
COHORT_STRATEGIES = (SEQUENTIAL_MASKED, cohort_lib.LOOP, cohort_lib.VMAP)  # the trainer's cohort model
JAX_STRATEGIES = (SEQUENTIAL_OWN, *COHORT_STRATEGIES)
STRATEGIES = (*JAX_STRATEGIES, TORCH_SEQUENTIAL)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DECODER_PREFIX = "decoder_"  # models name each task's decoder decoder_<task> (tg_jax.models.xception)
DEFAULT_NETWORKS = {"cpu": (1, 5, 15), "other": (31,)}
TORCH_MODELS = ("xception",)  # model families benchmarks/torch_xception.py ports

# The paper's five tasks; the benchmark needs no dataset (and so no TensorFlow), only their shapes.
_TASKS = flags.DEFINE_list("tasks", ["segment_semantic", "depth", "normals", "keypoints2d", "edges2d"],
                           "Tasks whose subsets are the networks (tg_jax.tasks registry names).")
_NETWORKS = flags.DEFINE_list("networks", [], "Numbers of networks N to train at once; default "
                              f"{','.join(map(str, DEFAULT_NETWORKS['cpu']))} on CPU, "
                              f"{','.join(map(str, DEFAULT_NETWORKS['other']))} on accelerators.")
_STRATEGIES = flags.DEFINE_list("strategies", list(STRATEGIES), f"Strategies, from {', '.join(STRATEGIES)}; "
                                "a strategy that times out is skipped and a fresh worker measures the ones after it.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32"], "Computation dtypes (config.half_precision), from float32, bfloat16.")
_SCALE = flags.DEFINE_enum("scale", "cpu", ["cpu", "paper"], "Model scale (models.default_config).")
_MODEL = flags.DEFINE_string("model", "xception", "Model family name (tg_jax.models registry).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 0, "Image side; 0: the scale's (32 cpu, 256 paper).")
_BATCH_SIZE = flags.DEFINE_list("batch_size", ["32"], "Images per step (the same batch for every network); "
                                "a list measures each.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps after one warm-up step.")
_MAX_STEP_SECONDS = flags.DEFINE_float(
    "max_step_seconds", 20.0, "A strategy whose warm-up step (after compiling) takes longer is skipped.")
_TIMEOUT = flags.DEFINE_float(
    "timeout", 120.0, "Seconds a strategy may take (the first of a worker: with the setup), compiling included "
    "(sequential_own: this per distinct compiled step); its worker is then stopped and a fresh one measures the "
    "strategies after it; a strategy skipped as too slow at some N is not tried at larger N.")
_ISOLATE = flags.DEFINE_bool("isolate", True, "Measure in subprocesses, so a slow strategy can be stopped.")
_NETWORKS_PER_STEP = flags.DEFINE_integer(
    "networks_per_step", 0, "loop and vmap: at most this many networks per jitted step, in chunks (the "
    "trainer's max_networks_per_chunk, for cohorts larger than device memory); 0: all N in one step.")
_WORKER = flags.DEFINE_bool("worker", False, "Internal: measure one (N, dtype, batch size); print one JSON row a line.")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", 0.0, "Device peak TFLOP/s: adds model TFLOP/s and FLOPs "
                                  "utilisation (mfu) to each row; 0: neither (saves lowering every network's step).")
_JSON = flags.DEFINE_string("json", "", "Also write the JSON here.")


def make_spec(num_networks: int, scale: str = "cpu", image_size: int = 0, batch_size: int = 32,
              dtype_name: str = "float32", model_name: str = "xception",
              task_names: tuple[str, ...] = ("segment_semantic", "depth", "normals", "keypoints2d", "edges2d"),
              ) -> dict[str, Any]:
  """What every strategy trains, without any JAX array (so the PyTorch worker never touches the GPU
  through JAX): the first ``num_networks`` subsets of ``task_names``, the cohort they form, the model
  config, optimiser and batch shape.

  Returns a dict: ``subsets`` (each network's tasks), ``task_names`` (the cohort's tasks),
  ``task_mask`` ``[nets, tasks]`` numpy bool, ``model_config``, ``optimizer_config``,
  ``image_shape`` ``(h, w, 3)``, ``batch_size``, ``dtype_name``, ``model_name``, ``scale``.
  """
  for name in task_names:
    tasks_lib.get(name)  # an unknown name fails here, naming the known tasks
  if dtype_name not in DTYPES:
    raise ValueError(f"unknown dtype {dtype_name!r}; use one of {', '.join(DTYPES)}")
  model_config = models.default_config(scale, model_name)
  subsets = networks_lib.subsets(task_names, "all")
  if not 1 <= num_networks <= len(subsets):
    raise ValueError(f"--networks must be between 1 and {len(subsets)} (the subsets of {len(task_names)} "
                     f"tasks); got {num_networks}")
  cohort = networks_lib.cohorts([networks_lib.Network(s, 1.0) for s in subsets[:num_networks]], task_names,
                                not models.shares_one_encoder(model_config))[0]
  side = image_size or model_config.cost_image_size
  return {"subsets": [n.tasks for n in cohort.networks], "task_names": cohort.tasks,
          "task_mask": np.asarray(cohort.task_mask(), bool), "model_config": model_config,
          "optimizer_config": config_lib.optimizer_config(), "image_shape": (side, side, 3),
          "batch_size": batch_size, "dtype_name": dtype_name, "model_name": model_name, "scale": scale}


def make_setup(num_networks: int, scale: str = "cpu", image_size: int = 0, batch_size: int = 32,
               dtype_name: str = "float32", model_name: str = "xception",
               task_names: tuple[str, ...] = ("segment_semantic", "depth", "normals", "keypoints2d", "edges2d"),
               ) -> dict[str, Any]:
  """``make_spec``'s dict plus what the JAX strategies share: ``model`` (the cohort model, one
  decoder per task of ``task_names``), ``optimizer``, ``state`` (``cohort.CohortState``,
  ``[nets, ...]``), ``batch`` (``image`` ``[b, h, w, 3]`` and one random label per task), ``dtype``
  and ``programs`` (``sequential_own``'s lowered steps, filled on first use).
  """
  spec = make_spec(num_networks, scale, image_size, batch_size, dtype_name, model_name, task_names)
  dtype = DTYPES[dtype_name]
  model = models.build(spec["model_config"], spec["task_names"], 1.0, dtype)
  optimizer = cohort_lib.make_optimizer(spec["optimizer_config"], steps_per_epoch=100)
  # Networks are initialised one at a time and stacked, as the trainer does (same values, faster compile).
  init_one = jax.jit(functools.partial(cohort_lib.init, model, optimizer, image_shape=spec["image_shape"],
                                       num_tasks=len(spec["task_names"])))
  state = cohort_lib.concatenate([init_one(network_key(i)[None]) for i in range(num_networks)])
  keys = iter(jax.random.split(jax.random.PRNGKey(1), len(spec["task_names"]) + 1))
  batch = {"image": jax.random.normal(next(keys), (batch_size, *spec["image_shape"]), jnp.float32)}
  side = spec["image_shape"][0]
  for name in spec["task_names"]:
    task, key = tasks_lib.get(name), next(keys)
    if task.kind == tasks_lib.DENSE_REGRESSION:
      batch[name] = jax.random.normal(key, (batch_size, side, side, task.channels), jnp.float32)
    elif task.kind == tasks_lib.SEGMENTATION:
      batch[name] = jax.random.randint(key, (batch_size, side, side), 0, task.channels, jnp.int32)
    else:
      batch[name] = jax.random.randint(key, (batch_size,), 0, task.channels, jnp.int32)
  return {**spec, "model": model, "optimizer": optimizer, "state": state, "batch": batch, "dtype": dtype,
          "task_mask": jnp.asarray(spec["task_mask"]), "programs": {}}


def network_key(index: int) -> jax.Array:
  """The initialisation key of network ``index``, whichever model (cohort or own decoders) it is built in."""
  return jax.random.fold_in(jax.random.PRNGKey(0), index)


def _jitted_step(model, optimizer, task_names, how: str):
  step_fn = functools.partial(cohort_lib.train_step, model=model, optimizer=optimizer, task_names=task_names)
  # The trainer donates the state too: the old parameters' buffers are reused for the new ones.
  return jax.jit(lambda state, batch, step, task_mask: step_fn(state, batch, step, task_mask=task_mask, how=how),
                 donate_argnums=0)


def _memory_bytes(compiled) -> dict[str, int]:
  analysis = compiled.memory_analysis()
  if analysis is None:
    return {}
  return {"step_argument_bytes": int(analysis.argument_size_in_bytes),
          "step_output_bytes": int(analysis.output_size_in_bytes),
          "step_temp_bytes": int(analysis.temp_size_in_bytes)}


def chunk_sizes(num_networks: int, networks_per_step: int) -> list[int]:
  """Sizes of the fewest chunks of at most ``networks_per_step`` networks (0: all), as even as possible."""
  count = -(-num_networks // (networks_per_step or num_networks))
  base, extra = divmod(num_networks, count)
  return [base + 1] * extra + [base] * (count - extra)


class CohortRunner:
  """``sequential_masked``, ``loop`` or ``vmap`` on the setup's cohort model; ``step()`` advances every
  network once.

  ``loop`` and ``vmap`` step chunks of at most ``networks_per_step`` networks (0: all in one step), as
  the trainer does where a cohort does not fit in device memory (``max_networks_per_chunk``).
  """

  def __init__(self, strategy: str, setup: dict[str, Any], networks_per_step: int = 0):
    if strategy not in COHORT_STRATEGIES:
      raise ValueError(f"unknown cohort strategy {strategy!r}; known: {', '.join(COHORT_STRATEGIES)}")
    self.batch = setup["batch"]
    how = cohort_lib.VMAP if strategy == SEQUENTIAL_MASKED else strategy
    jitted = _jitted_step(setup["model"], setup["optimizer"], setup["task_names"], how)
    # sequential_masked: one state and mask per network, each with a network axis of 1.
    sizes = chunk_sizes(setup["task_mask"].shape[0], 1 if strategy == SEQUENTIAL_MASKED else networks_per_step)
    starts = np.cumsum([0, *sizes[:-1]])
    # The copy keeps the setup's state alive for other strategies (donation would delete it).
    self.states = [jax.tree.map(jnp.copy, s) for s in cohort_lib.split(setup["state"], sizes)]
    self.masks = [setup["task_mask"][start:start + size] for start, size in zip(starts, sizes)]
    start = time.perf_counter()
    self.compiled = {}  # chunk size -> compiled step
    for state, mask in zip(self.states, self.masks):
      if mask.shape[0] not in self.compiled:
        self.compiled[mask.shape[0]] = jitted.lower(state, self.batch, jnp.int32(0), mask).compile()
    self.compile_seconds = time.perf_counter() - start
    self.networks_per_step = max(sizes)
    self.step_count = 0

  def step(self) -> None:
    step = jnp.int32(self.step_count)
    self.states = [self.compiled[mask.shape[0]](state, self.batch, step, mask)[0]
                   for state, mask in zip(self.states, self.masks)]
    jax.block_until_ready(self.states)
    self.step_count += 1

  def state(self) -> cohort_lib.CohortState:
    """The networks' state, ``[nets, ...]``, whatever the strategy."""
    return cohort_lib.concatenate(self.states)

  def memory_bytes(self) -> dict[str, int]:
    """XLA's memory analysis of the step of the largest chunk (for ``sequential_masked``, one network)."""
    return _memory_bytes(self.compiled[self.networks_per_step])


def program_key(task_names) -> tuple[tuple[str, int], ...]:
  """Networks whose keys are equal run the same computation: the (kind, channels) of their tasks in the
  order of the tasks' names, which is the order of their decoders' parameters (``decoder_<task>``
  sorted)."""
  return tuple((tasks_lib.get(t).kind, tasks_lib.get(t).channels) for t in sorted(task_names))


def own_programs(setup: dict[str, Any]) -> dict[tuple, dict[str, Any]]:
  """``sequential_own``'s one-network steps, lowered (not compiled), one per distinct ``program_key``.

  Each value: ``tasks`` (the first network's with that key, whose names the step's batch uses),
  ``state`` (its state's shapes), ``lowered``, ``flops`` (XLA's cost analysis of the step). Cached in ``setup["programs"]``.
  """
  programs = setup["programs"]
  for subset in setup["subsets"]:
    key = program_key(subset)
    if key in programs:
      continue
    model = models.build(setup["model_config"], subset, 1.0, setup["dtype"])
    state = jax.eval_shape(functools.partial(cohort_lib.init, model, setup["optimizer"],
                                             image_shape=setup["image_shape"], num_tasks=len(subset)),
                           jax.ShapeDtypeStruct((1, *network_key(0).shape), network_key(0).dtype))
    batch = {"image": setup["batch"]["image"], **{t: setup["batch"][t] for t in subset}}
    lowered = _jitted_step(model, setup["optimizer"], subset, cohort_lib.VMAP).lower(
        state, batch, jnp.int32(0), jnp.ones((1, len(subset)), jnp.bool_))
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    programs[key] = {"tasks": subset, "state": state, "lowered": lowered,
                     "flops": float(cost.get("flops", 0.0)) if cost else 0.0}
  return programs


def model_flops(setup: dict[str, Any]) -> float:
  """FLOPs of one step of every network with its own decoders only: the useful work of a step."""
  programs = own_programs(setup)
  return sum(programs[program_key(subset)]["flops"] for subset in setup["subsets"])


def own_leaves(cohort_state: Any, index: int, subset: tuple[str, ...], task_names: tuple[str, ...]) -> list[np.ndarray]:
  """Network ``index``'s part of a cohort state ``[nets, ...]`` (on the host: ``jax.device_get``) as the
  leaves ``[1, ...]`` of its own-decoder state.

  Drops the other tasks' decoders (the subtrees ``decoder_<task>`` in parameters, batch statistics and
  optimiser state) and their columns of the ``[nets, tasks]`` trackers. The leaves keep their order,
  which is that of a state built with only ``subset``'s decoders (dict keys flatten sorted). With
  flax's name-derived initialisers this is exactly the state ``cohort.init`` gives that network.
  """
  columns = [task_names.index(t) for t in subset]
  others = {DECODER_PREFIX + t for t in task_names if t not in subset}
  leaves = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(cohort_state)[0]:
    if any(getattr(entry, "key", None) in others for entry in path):
      continue
    leaf = np.asarray(leaf)[index:index + 1]
    if len(path) == 1 and leaf.ndim == 2 and leaf.shape[1] == len(task_names):  # a [nets, tasks] tracker
      leaf = leaf[:, columns]
    leaves.append(leaf)
  return leaves


class OwnDecodersRunner:
  """``sequential_own``: network after network, each with only its own tasks' decoders.

  Each network starts from its part of the setup's cohort state (``own_leaves``: the same values as
  ``cohort.init`` of its own model). A network runs the compiled step of its ``program_key``, built for
  the first network with that key: its state is kept in that network's tree structure (the same
  shapes, decoders in the same order) and its labels are passed under that network's task names.
  """

  def __init__(self, setup: dict[str, Any]):
    start = time.perf_counter()
    programs = own_programs(setup)
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:  # XLA compiles without the GIL
      compiled = dict(zip(programs, pool.map(lambda p: p["lowered"].compile(), programs.values())))
    self.compile_seconds = time.perf_counter() - start
    self.num_programs = len(programs)
    self.networks = []
    cohort_state = jax.device_get(setup["state"])
    for index, subset in enumerate(setup["subsets"]):
      program = programs[program_key(subset)]
      leaves = own_leaves(cohort_state, index, subset, setup["task_names"])
      shapes = lambda leaves: [(leaf.shape, leaf.dtype) for leaf in leaves]
      if shapes(leaves) != shapes(jax.tree.leaves(program["state"])):
        raise ValueError(f"network {subset}'s state does not have the shapes of {program['tasks']}'s, though their "
                         f"program_key is the same: model {setup['model_name']!r} does not name its decoders "
                         f"{DECODER_PREFIX}<task>; make own_leaves and program_key follow its parameter names")
      batch = {"image": setup["batch"]["image"],
               **{shared: setup["batch"][own] for own, shared in zip(sorted(subset), sorted(program["tasks"]))}}
      state = jax.tree.unflatten(jax.tree.structure(program["state"]), [jnp.asarray(leaf) for leaf in leaves])
      self.networks.append({"tasks": subset, "compiled": compiled[program_key(subset)], "state": state,
                            "batch": batch, "mask": jnp.ones((1, len(subset)), jnp.bool_)})
    self.memory = max((_memory_bytes(c) for c in compiled.values()), key=lambda m: m.get("step_temp_bytes", 0))
    self.step_count = 0

  def step(self) -> None:
    step = jnp.int32(self.step_count)
    for network in self.networks:
      network["state"] = network["compiled"](network["state"], network["batch"], step, network["mask"])[0]
    jax.block_until_ready([network["state"] for network in self.networks])
    self.step_count += 1

  def states(self) -> list[cohort_lib.CohortState]:
    """Each network's state, ``[1, ...]``; its decoders are named after its program's first network's tasks."""
    return [network["state"] for network in self.networks]

  def memory_bytes(self) -> dict[str, int]:
    """XLA's memory analysis of the compiled step with the most temporary memory."""
    return self.memory


class TorchRunner:
  """``torch_sequential``: the PyTorch port, network after network with its own decoders."""

  def __init__(self, spec: dict[str, Any]):
    import torch  # pylint: disable=import-outside-toplevel
    from benchmarks import torch_xception  # pylint: disable=import-outside-toplevel
    self.torch = torch
    self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_cuda = self.device.type == "cuda"
    if on_cuda:
      torch.backends.cudnn.benchmark = True  # picks the fastest convolution algorithm per shape
      torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as XLA's default precision
    self.autocast = functools.partial(torch.autocast, self.device.type, dtype=torch.bfloat16,
                                      enabled=spec["dtype_name"] == "bfloat16")
    memory_format = torch.channels_last if on_cuda else torch.contiguous_format
    start = time.perf_counter()
    optimizer = spec["optimizer_config"]
    generator = torch.Generator().manual_seed(0)
    side, batch_size = spec["image_shape"][0], spec["batch_size"]
    self.images = torch.randn(batch_size, 3, side, side, generator=generator).to(
        self.device, memory_format=memory_format)
    self.labels = {}
    for name in spec["task_names"]:
      task = tasks_lib.get(name)
      if task.kind == tasks_lib.DENSE_REGRESSION:
        label = torch.randn(batch_size, task.channels, side, side, generator=generator)
      elif task.kind == tasks_lib.SEGMENTATION:
        label = torch.randint(0, task.channels, (batch_size, side, side), generator=generator)
      else:
        label = torch.randint(0, task.channels, (batch_size,), generator=generator)
      self.labels[name] = label.to(self.device)
    self.networks = []
    for subset in spec["subsets"]:
      net = torch_xception.like(models.build(spec["model_config"], subset, 1.0)).to(
          self.device, memory_format=memory_format)
      # The learning-rate plateau schedule acts once per epoch; a benchmark step does not reach it.
      sgd = torch.optim.SGD(net.parameters(), lr=optimizer.learning_rate, momentum=optimizer.momentum,
                            nesterov=optimizer.nesterov)
      self.networks.append((subset, net.train(), sgd))
    self.loss = torch_xception.task_loss
    self.compile_seconds = time.perf_counter() - start  # building the networks: PyTorch compiles nothing

  def step(self) -> None:
    for subset, net, sgd in self.networks:
      with self.autocast():
        outputs = net(self.images)
        loss = sum(self.loss(t, outputs[t], self.labels[t]) for t in subset) / len(subset)
      sgd.zero_grad(set_to_none=True)
      loss.backward()
      sgd.step()
    if self.device.type == "cuda":
      self.torch.cuda.synchronize()

  def memory_bytes(self) -> dict[str, int]:
    if self.device.type != "cuda":
      return {}
    return {"peak_device_bytes": int(self.torch.cuda.max_memory_allocated())}


def torch_skip_reason(model_name: str) -> str | None:
  """Why ``torch_sequential`` cannot run here, or None."""
  if importlib.util.find_spec("torch") is None:
    return "skipped: torch not installed"
  if model_name not in TORCH_MODELS:
    return f"skipped: benchmarks/torch_xception.py ports model {', '.join(TORCH_MODELS)} only, not {model_name!r}"
  return None


def make_runner(strategy: str, setup: dict[str, Any], networks_per_step: int = 0):
  """The runner of ``strategy`` on ``setup`` (``make_setup``'s; for ``torch_sequential``, ``make_spec``'s
  is enough): ``compile_seconds``, ``step()``, ``memory_bytes()``. ``networks_per_step``: see
  ``CohortRunner``."""
  if strategy == SEQUENTIAL_OWN:
    return OwnDecodersRunner(setup)
  if strategy == TORCH_SEQUENTIAL:
    return TorchRunner(setup)
  if strategy in COHORT_STRATEGIES:
    return CohortRunner(strategy, setup, networks_per_step)
  raise ValueError(f"unknown strategy {strategy!r}; known strategies: {', '.join(STRATEGIES)}")


def _row_key(spec: dict[str, Any]) -> dict[str, Any]:
  return {"networks": len(spec["subsets"]), "dtype": spec["dtype_name"], "batch_size": spec["batch_size"],
          "scale": spec["scale"], "model": spec["model_name"], "image_size": spec["image_shape"][0]}


def measure(strategy: str, setup: dict[str, Any], *, steps: int, max_step_seconds: float,
            peak_tflops: float, networks_per_step: int = 0) -> dict[str, Any]:
  """One result row: speed, compile time, memory (and FLOPs utilisation) of ``strategy`` on a setup."""
  row = {"strategy": strategy, **_row_key(setup)}
  runner = make_runner(strategy, setup, networks_per_step)
  row["compile_s"] = round(runner.compile_seconds, 3)
  if strategy == SEQUENTIAL_OWN:
    row["compiled_steps"] = runner.num_programs
  if strategy in (cohort_lib.LOOP, cohort_lib.VMAP):
    row["networks_per_step"] = runner.networks_per_step
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
  num_networks, batch_size = row["networks"], row["batch_size"]
  row.update({"step_s": seconds, "steps_timed": steps,
              "net_images_per_s": round(num_networks * batch_size / seconds, 1),
              "s_per_network_step": seconds / num_networks})
  row.update(runner.memory_bytes())
  row["peak_host_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  if strategy != TORCH_SEQUENTIAL:  # JAX's devices; the PyTorch worker must not start JAX on the GPU
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
      row["peak_device_bytes"] = int(stats["peak_bytes_in_use"])
    if peak_tflops:
      row["model_flops_per_step"] = model_flops(setup)
  return row


def add_flops_utilisation(rows: list[dict[str, Any]], peak_tflops: float) -> None:
  """Adds ``model_tflops_per_s`` and ``mfu`` to measured rows, with the model FLOPs of a JAX row of the
  same N, dtype and batch (the PyTorch row's networks are the same)."""
  flops = {_group(r): r["model_flops_per_step"] for r in rows if "model_flops_per_step" in r}
  for row in rows:
    if "step_s" in row and _group(row) in flops:
      row["model_flops_per_step"] = flops[_group(row)]
      row["model_tflops_per_s"] = round(flops[_group(row)] / row["step_s"] / 1e12, 4)
      row["mfu"] = round(flops[_group(row)] / row["step_s"] / (peak_tflops * 1e12), 4)


def _group(row: dict[str, Any]) -> tuple:
  return row["networks"], row["dtype"], row.get("batch_size")


def _measure_all(num_networks: int, dtype_name: str, batch_size: int, strategies: list[str]):
  """Yields one row per strategy, all on one setup (one initialisation for all strategies)."""
  make = make_setup if set(strategies) - {TORCH_SEQUENTIAL} else make_spec
  setup = make(num_networks, _SCALE.value, _IMAGE_SIZE.value, batch_size, dtype_name, _MODEL.value,
               tuple(_TASKS.value))
  for strategy in strategies:
    try:
      yield measure(strategy, setup, steps=_STEPS.value, max_step_seconds=_MAX_STEP_SECONDS.value,
                    peak_tflops=_PEAK_TFLOPS.value, networks_per_step=_NETWORKS_PER_STEP.value)
    except Exception as error:  # pylint: disable=broad-except  # e.g. out of device memory: record, go on
      yield {**_skipped(strategy, num_networks, dtype_name, batch_size,
                        f"failed: {type(error).__name__}: {str(error)[:300]}")}


def _skipped(strategy: str, num_networks: int, dtype_name: str, batch_size: int, reason: str) -> dict[str, Any]:
  return {"strategy": strategy, "networks": num_networks, "dtype": dtype_name, "batch_size": batch_size,
          "scale": _SCALE.value, "model": _MODEL.value, "skipped": reason}


def _strategy_timeout(strategy: str, num_networks: int) -> float:
  if strategy != SEQUENTIAL_OWN:
    return _TIMEOUT.value
  subsets = networks_lib.subsets(tuple(_TASKS.value), "all")[:num_networks]
  return _TIMEOUT.value * len({program_key(s) for s in subsets})


def _measure_in_subprocess(num_networks: int, dtype_name: str, batch_size: int, strategies: list[str],
                           env: dict[str, str]) -> list[dict[str, Any]]:
  """Rows of worker subprocesses that print one JSON row a line (``run_workers``)."""
  def start(to_run: list[str], stderr: IO[str]) -> subprocess.Popen:
    command = [sys.executable, os.path.abspath(__file__), f"--networks={num_networks}",
               f"--strategies={','.join(to_run)}", f"--dtypes={dtype_name}", f"--scale={_SCALE.value}",
               f"--model={_MODEL.value}", f"--image_size={_IMAGE_SIZE.value}", f"--batch_size={batch_size}",
               f"--steps={_STEPS.value}", f"--max_step_seconds={_MAX_STEP_SECONDS.value}",
               f"--peak_tflops={_PEAK_TFLOPS.value}", f"--tasks={','.join(_TASKS.value)}",
               f"--networks_per_step={_NETWORKS_PER_STEP.value}", "--worker"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)

  return run_workers(strategies, start, lambda strategy: _strategy_timeout(strategy, num_networks),
                     lambda strategy, reason: _skipped(strategy, num_networks, dtype_name, batch_size, reason))


def run_workers(strategies: list[str], start: Callable[[list[str], IO[str]], subprocess.Popen],
                timeout_of: Callable[[str], float],
                skipped: Callable[[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per strategy, in order, from workers ``start(strategies, stderr)`` that print one JSON row a
  line and write their diagnostics to the file ``stderr``.

  A strategy without a row within ``timeout_of(strategy)`` of the previous row (the first: of the
  worker's start), or whose worker exits first, gets ``skipped(strategy, reason)``; its worker is
  stopped and a fresh one measures the strategies after it, so one slow strategy costs only its own row.
  A worker that dies gives its last error line as the reason (an XLA compiler's failed check, say), since
  its diagnostics are otherwise lost with it.
  """
  rows: list[dict[str, Any]] = []
  while len(rows) < len(strategies):
    remaining = strategies[len(rows):]
    with tempfile.TemporaryFile("w+") as stderr:
      worker = start(remaining, stderr)
      try:
        for strategy in remaining:
          timeout = timeout_of(strategy)
          ready, _, _ = select.select([worker.stdout], [], [], timeout)
          line = worker.stdout.readline() if ready else ""
          if not line:
            reason = (f"too slow: no result within {timeout:g} s (--timeout; compiling and the first step)"
                      if not ready else f"worker exited with {worker.wait()} before measuring it"
                      + _last_error(stderr))
            rows.append(skipped(strategy, reason))
            break
          rows.append(json.loads(line))
          print(_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
      finally:
        if worker.poll() is None:
          worker.kill()
        worker.wait()
  return rows


def _last_error(stderr: IO[str]) -> str:
  """``": <line>"`` for the last line of a worker's diagnostics that reports a failure, else ``""``.

  Fatal absl/glog lines start with ``F`` and a date (``F1130 23:02:11.17 ... Check failed: ...``);
  Python's end with the exception (``ValueError: ...``).
  """
  stderr.seek(0)
  failures = [line.strip() for line in stderr
              if re.match(r"F\d{4} |[\w.]*(Error|Exception): ", line) or "Check failed" in line]
  return f": {failures[-1][:300]}" if failures else ""


def _table(results: list[dict[str, Any]]) -> str:
  lines = [f"{'strategy':<17} {'dtype':<8} {'N':>3} {'batch':>5} {'net-img/s':>10} {'s/step':>8} {'s/net-step':>10} "
           f"{'compile s':>9} {'temp MiB':>8} {'RSS MiB':>8}  note"]
  for row in results:
    head = f"{row['strategy']:<17} {row['dtype']:<8} {row['networks']:>3} {row.get('batch_size', '-'):>5}"
    if "net_images_per_s" in row:
      lines.append(f"{head} {row['net_images_per_s']:>10.1f} {row['step_s']:>8.3f} {row['s_per_network_step']:>10.4f} "
                   f"{row['compile_s']:>9.1f} {row.get('step_temp_bytes', 0) / 2**20:>8.1f} "
                   f"{row['peak_host_rss_bytes'] / 2**20:>8.0f}" + (f"  MFU {row['mfu']:.1%}" if "mfu" in row else ""))
    else:
      lines.append(f"{head} {'-':>10} {'-':>8} {'-':>10} {'-':>9} {'-':>8} {'-':>8}  {row.get('skipped')}")
  return "\n".join(lines)


def fastest(results: list[dict[str, Any]], num_networks: int, strategies=STRATEGIES) -> str | None:
  """Of ``strategies``, the one with the most float32 network-images per second at ``num_networks``
  (any batch size)."""
  measured = [r for r in results if r["networks"] == num_networks and r["dtype"] == "float32"
              and r["strategy"] in strategies and "net_images_per_s" in r]
  return max(measured, key=lambda r: r["net_images_per_s"])["strategy"] if measured else None


def speedups(results: list[dict[str, Any]], chosen: dict[int, str]) -> list[dict[str, Any]]:
  """Per (N, dtype, batch size): the chosen strategy's speed over ``sequential_own``'s and PyTorch's."""
  summary = []
  for group in dict.fromkeys(_group(r) for r in results):
    speed = {r["strategy"]: r["net_images_per_s"] for r in results if _group(r) == group and "net_images_per_s" in r}
    strategy = chosen[group[0]]
    if strategy not in speed:
      continue
    entry = {"networks": group[0], "dtype": group[1], "batch_size": group[2], "chosen": strategy}
    for baseline in (SEQUENTIAL_OWN, TORCH_SEQUENTIAL):
      if baseline in speed:
        entry[f"speedup_vs_{baseline}"] = round(speed[strategy] / speed[baseline], 3)
    summary.append(entry)
  return summary


def main(argv):
  del argv
  for name in _STRATEGIES.value:
    if name not in STRATEGIES:
      raise app.UsageError(f"unknown strategy {name!r}; known strategies: {', '.join(STRATEGIES)}")
  for name in _DTYPES.value:
    if name not in DTYPES:
      raise app.UsageError(f"unknown dtype {name!r}; use float32 or bfloat16")
  batch_sizes = [int(b) for b in _BATCH_SIZE.value]
  if _WORKER.value:
    for row in _measure_all(int(_NETWORKS.value[0]), _DTYPES.value[0], batch_sizes[0], _STRATEGIES.value):
      print(json.dumps(row), flush=True)
    return
  with tempfile.TemporaryDirectory(prefix="train_step_compilation_cache_") as cache_dir:
    # Workers share compiled programs through a cache for this run only: the one-network steps recur at
    # every N, and on CPU compiling is most of the run. compile_s then counts loading a cached step.
    worker_env = {"JAX_COMPILATION_CACHE_DIR": cache_dir, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                  **os.environ}
    _run(worker_env)


def _run(worker_env: dict[str, str]) -> None:
  batch_sizes = [int(b) for b in _BATCH_SIZE.value]
  # This process only asks JAX which backend it has; without this it would hold 75% of a GPU's memory
  # (JAX's preallocation) while the workers measure. The workers keep the caller's setting.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  backend = jax.default_backend()
  counts = ([int(n) for n in _NETWORKS.value] if _NETWORKS.value
            else list(DEFAULT_NETWORKS["cpu" if backend == "cpu" else "other"]))
  jax_strategies = [s for s in _STRATEGIES.value if s != TORCH_SEQUENTIAL]
  torch_skip = torch_skip_reason(_MODEL.value) if TORCH_SEQUENTIAL in _STRATEGIES.value else None
  # The PyTorch worker never uses JAX's GPU (it takes only the model's shapes from tg_jax).
  torch_env = {**worker_env, "JAX_PLATFORMS": "cpu"}
  results = []
  too_slow: dict[tuple[str, str, int], int] = {}  # (strategy, dtype, batch size) -> the N at which it was skipped
  for num_networks in counts:
    for dtype_name in _DTYPES.value:
      for batch_size in batch_sizes:
        tried = [s for s in _STRATEGIES.value if (s, dtype_name, batch_size) not in too_slow]
        rows = []
        for group, env in ((jax_strategies, worker_env), ([TORCH_SEQUENTIAL], torch_env)):
          to_run = [s for s in group if s in tried and not (s == TORCH_SEQUENTIAL and torch_skip)]
          if not to_run:
            continue
          rows += (_measure_in_subprocess(num_networks, dtype_name, batch_size, to_run, env) if _ISOLATE.value
                   else list(_measure_all(num_networks, dtype_name, batch_size, to_run)))
        measured = {row["strategy"] for row in rows}
        for strategy in _STRATEGIES.value:
          if strategy in measured:
            continue
          if (strategy, dtype_name, batch_size) in too_slow:
            reason = (f"too slow: skipped at N={too_slow[strategy, dtype_name, batch_size]}, so not tried at "
                      "larger N")
          else:  # every strategy run gets a row (run_workers): what is left is the PyTorch port, unavailable
            reason = torch_skip
          rows.append(_skipped(strategy, num_networks, dtype_name, batch_size, reason))
        for row in rows:
          if row.get("skipped", "").startswith("too slow"):
            too_slow.setdefault((row["strategy"], dtype_name, batch_size), num_networks)
        results += sorted(rows, key=lambda r: _STRATEGIES.value.index(r["strategy"]))
  if _PEAK_TFLOPS.value:
    add_flops_utilisation(results, _PEAK_TFLOPS.value)
  chosen = {n: cohort_lib.choose_parallelism(backend, n) for n in counts}
  report = {"backend": backend, "device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "results": results,
            "chosen": chosen[max(counts)],
            "chosen_per_networks": {str(n): s for n, s in chosen.items()},
            "fastest_per_networks": {str(n): fastest(results, n) for n in counts},
            "fastest_trainer_strategy_per_networks": {
                str(n): fastest(results, n, (cohort_lib.LOOP, cohort_lib.VMAP)) for n in counts},
            "speedups": speedups(results, chosen)}
  text = json.dumps(report, indent=1)
  print(text)
  print(_table(results), file=sys.stderr)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  app.run(main)
