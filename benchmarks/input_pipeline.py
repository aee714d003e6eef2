r"""Input pipeline throughput against the trainer's step on the same batches. Prints JSON.

  python benchmarks/input_pipeline.py [--data_dir=DIR] [--batch_size=64] [--steps=200]

Loads the default dataset (synthetic_scenes, 32x32; built into --data_dir, default a temporary
directory, if absent) and measures, for the paper's five tasks and for all ten:
(a) host batches per second from ``train_batches`` (prefetch thread included), as the trainer
    consumes them; (b) jitted training steps per second of one standard network (the project's
    ``models`` at size 1.0, CPU widths: forward, per-task losses, gradients) on those batches.
The pipeline keeps up when (a) exceeds (b); the ratio is reported.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from tg_jax import data  # noqa: E402
from tg_jax import models  # noqa: E402
from tg_jax import tasks as tasks_lib  # noqa: E402


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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--trainer_steps", type=int, default=20)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as temporary:
    config = data.default_config()
    config.data_dir = args.data_dir or temporary
    results = []
    for label, task_names in (("paper_five", data.default_tasks(config.name)),
                              ("all_ten", data.dataset_tasks(config.name))):
      start = time.perf_counter()
      dataset = data.load(config, task_names, "train")
      load_seconds = time.perf_counter() - start
      pipeline = pipeline_rate(dataset, args.batch_size, args.steps)
      trainer = trainer_rate(dataset, args.batch_size, args.trainer_steps)
      results.append({"tasks": label, "num_tasks": len(task_names), "load_seconds": round(load_seconds, 2),
                      "pipeline_batches_per_second": round(pipeline, 1),
                      "pipeline_images_per_second": round(pipeline * args.batch_size),
                      "trainer_steps_per_second": round(trainer, 1),
                      "pipeline_over_trainer": round(pipeline / trainer, 1)})
  print(json.dumps({"benchmark": "input_pipeline", "dataset": config.name, "image_size": config.image_size,
                    "batch_size": args.batch_size, "cpu_cores": os.cpu_count(),
                    "jax_backend": jax.default_backend(), "results": results}, indent=1))


if __name__ == "__main__":
  main()
