r"""Input pipeline throughput: the embedded dataset against the trainer's step, and Taskonomy-layout
PNGs at 256x256 decoded by grain's workers against what a paper-scale cohort step consumes. Prints JSON.

  python benchmarks/input_pipeline.py [--data_dir=DIR] [--batch_size=64] [--steps=200]
  python benchmarks/input_pipeline.py --parts=taskonomy --workers=0,1,2 [--taskonomy_views=480]

``synthetic_scenes`` (the default dataset, 32x32, in memory; built into --data_dir, default a
temporary directory, if absent), for the paper's five tasks and for all ten: (a) host batches per
second from ``train_batches``, as the trainer consumes them; (b)
jitted training steps per second of one standard network (the project's ``models`` at size 1.0,
CPU widths: forward, per-task losses, gradients) on those batches. The pipeline keeps up when (a)
exceeds (b); the ratio is reported.

``taskonomy``: writes a tree in the public release's layout (``--taskonomy_views`` views of smooth
random scenes at 256x256: rgb and the paper's five label domains as PNGs), builds its TFDS
ArrayRecord cache at 256x256 and reads training batches of the paper's five tasks with each
``--workers`` count: images per second (wall) and per CPU-second of every process involved (the
main process and grain's workers, ``psutil``), which is what each core adds when the host is not
shared. ``paper_step`` then sets that against the images per second the paper-scale cohort step
consumes: 31 networks (every subset of the five tasks) on one shared batch of 64 at 256x256, its
FLOPs counted by ``benchmarks/train_step.py``'s ``model_flops`` (XLA's cost analysis, bfloat16),
at ``--peak_tflops`` (an H100's dense bf16 peak, 989) and at ``--mfu`` of it; ``host_cores``
(16) less one for the trainer gives the workers a GPU host would run.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image
import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from tg_jax import data  # noqa: E402
from tg_jax import models  # noqa: E402
from tg_jax import tasks as tasks_lib  # noqa: E402


TASKONOMY_BUILDINGS = ("allensville", "beechwood", "coffeen", "darden", "emmaus", "forkland",
                       "hanson", "klickitat", "lakeville", "leonardo")


def _smooth_field(rng, size, channels):
  """Smooth random values in [0, 1] ``[size, size, channels]`` with some texture: PNGs of a size
  like rendered scenes' (noise would not compress; flat fields would compress too well)."""
  coarse = rng.uniform(size=(8, 8, channels))
  field = np.kron(coarse, np.ones((size // 8, size // 8, 1)))
  grid = np.linspace(0, 1, size)
  field = 0.6 * field + 0.3 * grid[:, None, None] * grid[None, :, None] + 0.1 * rng.uniform(size=field.shape)
  return np.clip(field, 0, 1)


def write_taskonomy_tree(root, num_views, size, seed=0):
  """``num_views`` views spread over ``TASKONOMY_BUILDINGS`` in the release's layout (rgb and the
  paper's five label domains)."""
  rng = np.random.default_rng(seed)
  for view_index in range(num_views):
    building = TASKONOMY_BUILDINGS[view_index % len(TASKONOMY_BUILDINGS)]
    view = f"point_{view_index}_view_0"
    depth_metres = 1 + 10 * _smooth_field(rng, size, 1)[..., 0]
    files = {
        ("rgb", "rgb"): (255 * _smooth_field(rng, size, 3)).astype(np.uint8),
        ("segment_semantic", "segmentsemantic"): (18 * _smooth_field(rng, size, 1)[..., 0]).astype(np.uint8),
        ("depth_zbuffer", "depth_zbuffer"): (512 * depth_metres).astype(np.uint16),
        ("normal", "normal"): (255 * _smooth_field(rng, size, 3)).astype(np.uint8),
        ("keypoints2d", "keypoints2d"): (4000 * _smooth_field(rng, size, 1)[..., 0]).astype(np.uint16),
        ("edge_texture", "edge_texture"): (6000 * _smooth_field(rng, size, 1)[..., 0]).astype(np.uint16),
    }
    for (folder, domain), array in files.items():
      path = os.path.join(root, folder, building, f"{view}_domain_{domain}.png")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      Image.fromarray(array).save(path)


def _cpu_seconds(process):
  """CPU seconds (user + system) of ``process`` and of its live children (grain's workers)."""
  def seconds(p):
    try:
      times = p.cpu_times()
      return times.user + times.system
    except psutil.NoSuchProcess:
      return 0.0
  return seconds(process), sum(seconds(child) for child in process.children(recursive=True))


def taskonomy_rates(data_dir, workers_list, batch_size, batches, views):
  """Training batches of the paper's five tasks from a Taskonomy-layout tree at 256x256, per worker count."""
  config = data.default_config()
  config.name = "taskonomy"
  config.image_size = 256
  config.data_dir = os.path.join(data_dir, "tfds")
  config.manual_dir = os.path.join(data_dir, f"taskonomy_{views}_views")
  config.validation_buildings, config.test_buildings = TASKONOMY_BUILDINGS[0], TASKONOMY_BUILDINGS[1]
  if not os.path.isdir(config.manual_dir):
    write_taskonomy_tree(config.manual_dir, views, 256)
  start = time.perf_counter()
  data.prepare(config)
  rows = []
  for workers in workers_list:
    config.workers = workers
    dataset = data.load(config, split="train")
    opened = time.perf_counter()
    stream = dataset.train_batches(batch_size, seed=0)
    next(stream)  # the workers started, the first batch decoded
    first = time.perf_counter() - opened
    process = psutil.Process()
    (main_before, workers_before), wall_before = _cpu_seconds(process), time.perf_counter()
    for _ in range(batches):
      next(stream)
    wall = time.perf_counter() - wall_before
    main_after, workers_after = _cpu_seconds(process)
    main, worker = main_after - main_before, workers_after - workers_before
    images = batches * batch_size
    rows.append({"workers": workers, "train_examples": dataset.num_examples, "first_batch_seconds": round(first, 1),
                 "images_per_second": round(images / wall, 1),
                 "images_per_cpu_second": round(images / (main + worker), 1),
                 # With workers, what the trainer's own process spends receiving a batch.
                 "main_process_cpu_ms_per_image": round(1000 * main / images, 2)})
    del stream
  return {"image_size": 256, "views": views, "batch_size": batch_size, "batches": batches,
          "prepare_seconds": round(time.perf_counter() - start, 1), "results": rows}


def paper_step_consumption(peak_tflops, mfu, host_cores, measured):
  """Images per second the paper-scale cohort step (31 networks, shared batch of 64, 256x256, bf16)
  consumes at ``peak_tflops`` x ``mfu``, against ``host_cores - 1`` workers at the ``measured`` rate
  (the slowest row with workers: images per CPU-second, and the main process's share)."""
  import train_step  # pylint: disable=import-outside-toplevel  # benchmarks/train_step.py, beside this file
  from tg_jax.training import cohort as cohort_lib  # pylint: disable=import-outside-toplevel
  batch_size = 64
  spec = train_step.make_spec(31, scale="paper", batch_size=batch_size, dtype_name="bfloat16")
  side = spec["image_shape"][0]
  # Shapes are all the FLOP count needs: make_setup's batch, abstract.
  batch = {"image": jax.ShapeDtypeStruct((batch_size, side, side, 3), jnp.float32)}
  for name in spec["task_names"]:
    task = tasks_lib.get(name)
    batch[name] = (jax.ShapeDtypeStruct((batch_size, side, side, task.channels), jnp.float32)
                   if task.kind == tasks_lib.DENSE_REGRESSION else jax.ShapeDtypeStruct((batch_size, side, side), jnp.int32))
  setup = {**spec, "dtype": jnp.bfloat16, "batch": batch, "programs": {},
           "optimizer": cohort_lib.make_optimizer(spec["optimizer_config"], steps_per_epoch=100)}
  flops = train_step.model_flops(setup)
  consumed = {f"at_{m:g}_of_peak": round(batch_size * peak_tflops * 1e12 * m / flops, 1) for m in (1.0, mfu)}
  result = {"networks": 31, "batch_size": batch_size, "image_size": side, "step_flops": flops,
            "peak_tflops": peak_tflops, "images_per_second_consumed": consumed, "host_cores": host_cores}
  if measured:
    result["host_images_per_second"] = round((host_cores - 1) * measured["images_per_cpu_second"], 1)
    result["host_main_process_limit_images_per_second"] = round(1000 / measured["main_process_cpu_ms_per_image"], 1)
  return result


def pipeline_rate(dataset, batch_size, steps):
  batches = dataset.train_batches(batch_size, seed=0)
  next(batches)  # thread started, first batch ready
  start = time.perf_counter()
  for _ in range(steps):
    next(batches)
  return steps / (time.perf_counter() - start)


def trainer_rate(dataset, batch_size, steps):
  net = models.build(models.default_config(), dataset.tasks, size=1.0)
  batch = next(dataset.train_batches(batch_size, seed=0))
  variables = net.init(jax.random.key(0), batch["image"], train=False)

  def loss(params, batch_stats, batch):
    outputs, _ = net.apply({"params": params, "batch_stats": batch_stats}, batch["image"], train=True,
                           mutable=["batch_stats"])
    return sum(jnp.mean(tasks_lib.get(t).loss(outputs[t], batch[t], batch.get(f"{t}_mask")))
               for t in dataset.tasks)

  step = jax.jit(jax.grad(loss))
  jax.block_until_ready(step(variables["params"], variables["batch_stats"], batch))
  start = time.perf_counter()
  for _ in range(steps):
    grads = step(variables["params"], variables["batch_stats"], batch)
  jax.block_until_ready(grads)
  return steps / (time.perf_counter() - start)


def synthetic_rates(data_dir, batch_size, steps, trainer_steps):
  config = data.default_config()
  config.data_dir = data_dir
  results = []
  for label, task_names in (("paper_five", data.default_tasks(config.name)),
                            ("all_ten", data.dataset_tasks(config.name))):
    start = time.perf_counter()
    dataset = data.load(config, task_names, "train")
    load_seconds = time.perf_counter() - start
    pipeline = pipeline_rate(dataset, batch_size, steps)
    row = {"tasks": label, "num_tasks": len(task_names), "load_seconds": round(load_seconds, 2),
           "pipeline_batches_per_second": round(pipeline, 1),
           "pipeline_images_per_second": round(pipeline * batch_size)}
    if trainer_steps:
      trainer = trainer_rate(dataset, batch_size, trainer_steps)
      row.update(trainer_steps_per_second=round(trainer, 1), pipeline_over_trainer=round(pipeline / trainer, 1))
    results.append(row)
  return {"dataset": config.name, "image_size": config.image_size, "batch_size": batch_size, "results": results}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--parts", default="synthetic_scenes,taskonomy,paper_step")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--trainer_steps", type=int, default=20, help="0: skip the trainer's step")
  parser.add_argument("--workers", default="0,1,2", help="grain worker counts for taskonomy")
  parser.add_argument("--taskonomy_views", type=int, default=480)
  parser.add_argument("--taskonomy_batch_size", type=int, default=32)
  parser.add_argument("--taskonomy_batches", type=int, default=12)
  parser.add_argument("--peak_tflops", type=float, default=989.0)
  parser.add_argument("--mfu", type=float, default=0.4)
  parser.add_argument("--host_cores", type=int, default=16)
  args = parser.parse_args()
  parts = args.parts.split(",")
  report = {"benchmark": "input_pipeline", "cpu_cores": os.cpu_count(), "load_average": os.getloadavg(),
            "jax_backend": jax.default_backend()}
  with tempfile.TemporaryDirectory() as temporary:
    data_dir = args.data_dir or temporary
    if "synthetic_scenes" in parts:
      report["synthetic_scenes"] = synthetic_rates(data_dir, args.batch_size, args.steps, args.trainer_steps)
    if "taskonomy" in parts:
      report["taskonomy"] = taskonomy_rates(data_dir, [int(w) for w in args.workers.split(",")],
                                            args.taskonomy_batch_size, args.taskonomy_batches, args.taskonomy_views)
  if "paper_step" in parts:
    measured = [r for r in report.get("taskonomy", {}).get("results", []) if r["workers"]]
    report["paper_step"] = paper_step_consumption(args.peak_tflops, args.mfu, args.host_cores,
                                                  min(measured, key=lambda r: r["images_per_cpu_second"], default=None))
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
