"""The paper's setting 4: another set of five tasks.

  python -m tg_jax.main --config=experiments/setting4_alternative_tasks.py          # 2-core CPU
  python -m tg_jax.main --config=experiments/setting4_alternative_tasks.py:full     # GPUs

The authors' alternative set (their ``--tasks=nacre``): surface normals (from setting 1), 3D
occlusion edges, reshading, principal curvature and the autoencoder, here rendered by the scenes'
own ray caster from their geometry and lighting (``tg_jax/data/render.py``). Every task subset and
half-size singles (Optimal, ESA and HOA from one run), two seeds.
"""

import ml_collections

from tg_jax.training import config as config_lib

TASKS = ("normals", "edges3d", "reshading", "curvature", "autoencoder")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = config_lib.base_config(arg)
  config.tasks = TASKS
  config.networks.subsets = "all"
  config.networks.seeds = 2
  config.selection.predict = "none"
  return config
