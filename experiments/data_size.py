"""Multi-task against single-task learning as the training set grows (Caruana's point: whether
sharing helps depends on how much data each task has).

One run per training-set size, each in its own workdir, then one summary over them:

  for scenes in 250 500 1000 2000; do
    python -m tg_jax.main --config=experiments/data_size.py --config.data.num_train_scenes=$scenes \
        --workdir=workdirs/data_size/$scenes
  done
  python -m tg_jax.data_size --workdirs=workdirs/data_size/250,workdirs/data_size/500,\
workdirs/data_size/1000,workdirs/data_size/2000 --out=workdirs/data_size

(``:full`` for the paper-scale network at 256 pixels, from 500 scenes: a validation there spans 800
training examples, and at most the whole set.) Each run trains every single-task network,
every pair and the all-task network, all of one standard network, with three seeds (48 trainings
of the preset's 300 steps per size on the CPU preset); the summary
(``tg_jax.reporting.data_size``) gives, per training-set size, how much lower each task's test loss
is in the all-task network and in its pairs than in its own single-task network, with intervals over
the seeds, and draws them against the number of training examples.

Validation and test scenes are the same at every size (the renderer seeds a scene by its split and
index), and a smaller training set is a prefix of a larger one. Every size trains for the same
number of steps and validates as often (``epoch_fraction`` follows ``data.num_train_scenes``), so a
smaller set is seen more times rather than trained for less; each network is scored at its best
validation.
"""

import ml_collections

from tg_jax.training import config as config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = config_lib.base_config(arg)
  # Training examples between validations at every size: the preset's at its training set (CPU: 5%
  # of 2000 scenes of 2 views, 25 steps of 8; full: 20%, 100 steps of 64).
  examples_per_validation = config.epoch_fraction * config.data.num_train_scenes * config.data.views_per_scene
  config.networks.half_size_singles = False  # the preset's subsets: every single task and pair
  config.networks.extra = ("+".join(config.tasks),)
  # Three seeds, as the study: Student-t intervals over two (one degree of freedom) are too wide for
  # gains of a few percent.
  config.networks.seeds = 3
  # The sweep's smallest size for both presets unless --config.data.num_train_scenes says otherwise.
  config.data.num_train_scenes = 500
  # A reference, so --config.data.num_train_scenes=N keeps the number of steps and validations (the
  # preset's float is replaced, not overridden: a reference cannot take its place).
  examples = config.data.get_ref("num_train_scenes") * config.data.get_ref("views_per_scene")
  del config["epoch_fraction"]
  config.epoch_fraction = examples_per_validation / examples
  config.selection.predict = "none"
  return config
