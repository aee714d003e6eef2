"""Prints JSON: parameters, encoder FLOPs and measured cost in standard networks per size.

For each model scale (the CPU default and the paper's network) and each size, the chosen encoder
widths, encoder parameters, encoder FLOPs per image (XLA cost analysis of the compiled encoder) and
the measured cost ``flops(size) / flops(1.0)``; plus one decoder's parameters per task kind. For
the architecture families without one shared encoder (``--families``: mtan, cross_stitch, mmoe), per
task count the width multiplier and the measured cost of everything before the heads, in standard
networks (``models.cost``).

  python benchmarks/model_cost.py
  python benchmarks/model_cost.py --scales=cpu --sizes=0.5,1.0
  python benchmarks/model_cost.py --scales=cpu --families=mtan,cross_stitch,mmoe --task_counts=1,3
"""

import functools
import json
import os
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tg_jax import models
from tg_jax import tasks as tasks_lib

_SCALES = flags.DEFINE_list("scales", ["cpu", "paper"], "Model scales to measure.")
_SIZES = flags.DEFINE_list("sizes", ["0.2", "0.3", "0.4", "0.5", "0.8", "1.0"], "Sizes in standard networks.")
_TASKS = flags.DEFINE_list("tasks", ["depth", "normals", "segment_semantic", "smiling"],
                           "Tasks whose decoders are counted (one per kind is enough).")
_FAMILIES = flags.DEFINE_list("families", [], "Architecture families whose cost depends on the task count.")
_TASK_COUNTS = flags.DEFINE_list("task_counts", ["1", "3"], "Task counts measured for --families.")


def _param_count(tree) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(tree))


def _measure(scale: str, sizes: list[float], task_names: list[str]) -> dict:
  config = models.default_config(scale)
  image_shape = (config.cost_image_size, config.cost_image_size, 3)
  images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  rows = []
  for size in sizes:
    start = time.perf_counter()
    net = models.build(config, task_names, size)
    search_seconds = time.perf_counter() - start
    params = jax.eval_shape(functools.partial(net.init, train=False), jax.random.key(0), images)["params"]
    rows.append({
        "size": size,
        "measured_cost_snt": round(models.encoder_cost(config, size), 4),
        "width_multiplier": round(models.width_multiplier(config, size), 5),
        "encoder_widths": list(net.encoder_widths),
        "encoder_params": _param_count(params["encoder"]),
        "encoder_flops_per_image": int(models.encoder_flops(net, image_shape)),
        "width_search_seconds": round(search_seconds, 2),
    })
  decoder_params = {}
  for name in task_names:
    task = tasks_lib.get(name)
    decoder_params[f"{name} ({task.kind}, {task.channels} channels)"] = _param_count(params[f"decoder_{name}"])
  return {"config": config.to_dict(), "image_shape": list(image_shape), "sizes": rows,
          "decoder_params": decoder_params}


def _measure_family(name: str, scale: str, sizes: list[float], counts: list[int]) -> list[dict]:
  config = models.default_config(scale, name)
  rows = []
  for count in counts:
    for size in sizes:
      start = time.perf_counter()
      multiplier = models.width_multiplier(config, size, count)
      rows.append({"tasks": count, "size": size, "width_multiplier": round(multiplier, 5),
                   "measured_cost_snt": round(models.encoder_cost(config, size, num_tasks=count), 4),
                   "width_search_seconds": round(time.perf_counter() - start, 2)})
  return rows


def main(argv):
  del argv
  sizes = [float(size) for size in _SIZES.value]
  report = {scale: _measure(scale, sizes, _TASKS.value) for scale in _SCALES.value}
  for name in _FAMILIES.value:
    report[name] = {scale: _measure_family(name, scale, sizes, [int(c) for c in _TASK_COUNTS.value])
                    for scale in _SCALES.value}
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  app.run(main)
