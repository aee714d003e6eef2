r"""Rendering speed of the synthetic_scenes ray caster on ONE CPU core, and the default build time. Prints JSON.

  python benchmarks/render_speed.py [--sizes=32,64] [--images=512] [--repeats=3] [--build]

Pins the process to one core and XLA to one thread before JAX starts, renders --images views
per size (scene sampling + jitted ray casting + labels + sensor noise: everything
``render.render_scenes`` does) and reports the best of --repeats. --build then times building
the default dataset (4000/500/500 images at 32x32) through TFDS into a temporary directory
(all cores for TFDS; XLA still single-threaded).
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="32,64")
  parser.add_argument("--images", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--build", action="store_true")
  args = parser.parse_args()

  all_cores = os.sched_getaffinity(0)
  # One core for the render measurement: pinned, and XLA told to use a single thread.
  core = sorted(os.sched_getaffinity(0))[0]
  os.sched_setaffinity(0, {core})
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from tg_jax.data import render  # pylint: disable=import-outside-toplevel

  results = []
  for size in (int(s) for s in args.sizes.split(",")):
    render.render_scenes([(99, 0, i) for i in range(8)], 1, size)  # compile
    times = []
    for repeat in range(args.repeats):
      keys = [(0, repeat, i) for i in range(args.images)]
      start = time.perf_counter()
      render.render_scenes(keys, 1, size)
      times.append(time.perf_counter() - start)
    best = min(times)
    results.append({"image_size": size, "images": args.images, "seconds": round(best, 3),
                    "images_per_second": round(args.images / best, 1),
                    "ms_per_image": round(1e3 * best / args.images, 3)})
  if args.build:
    os.sched_setaffinity(0, all_cores)
    build_seconds = _time_default_build()
  report = {"benchmark": "render_speed", "cores": 1, "machine": platform.processor() or platform.machine(),
            "renderer_version": render.RENDERER_VERSION, "results": results}
  if args.build:
    report["default_build_seconds"] = round(build_seconds, 1)
  print(json.dumps(report, indent=1))


def _time_default_build() -> float:
  from tg_jax import data  # pylint: disable=import-outside-toplevel
  config = data.default_config()
  with tempfile.TemporaryDirectory() as data_dir:
    config.data_dir = data_dir
    start = time.perf_counter()
    data.prepare(config)
    return time.perf_counter() - start


if __name__ == "__main__":
  main()
