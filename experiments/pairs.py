"""All single-task and pair networks plus half-size singles: what HOA needs (the paper's Sec. 3.2).

  python -m tg_jax.main --config=experiments/pairs.py          # 2-core CPU, embedded dataset
  python -m tg_jax.main --config=experiments/pairs.py:full     # GPUs, paper-scale network
"""

import ml_collections

from tg_jax.training import config as config_lib


def cpu_config() -> ml_collections.ConfigDict:
  """20 networks (5 singles, 10 pairs, 5 half-size singles) on 32x32 scenes in about 10 minutes.

  The encoder and decoders are narrower than ``models.default_config("cpu")`` and there is no
  middle block: on 2 CPU cores the step time is the budget, and these still beat the constant
  predictor on every task.
  """
  config = config_lib.base_config("cpu")
  config.model.encoder_widths = (8, 16, 24, 32, 48)
  config.model.middle_blocks = 0
  config.model.representation_width = 32
  config.model.decoder_widths = (16, 16, 8, 8)
  config.model.decoder_skip_width = 4
  config.model.cost_image_size = config.data.image_size
  config.batch_size = 32
  config.eval_batch_size = 100
  config.num_epochs = 5  # of 20% of the training set each: 125 steps
  config.optimizer.learning_rate = 0.1
  config.log_every_steps = 5
  return config


def full_config() -> ml_collections.ConfigDict:
  """The paper's setting: 256x256 images, the authors' small Xception, lr 0.2 halved on plateaus."""
  config = config_lib.base_config("paper")
  config.data.image_size = 256
  config.batch_size = 64
  config.eval_batch_size = 128
  config.num_epochs = 50
  config.optimizer.learning_rate = 0.2
  config.optimizer.plateau_patience = 2
  config.half_precision = True
  config.log_every_steps = 100
  return config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in ("", "cpu", "full"):
    raise ValueError(f"unknown variant {variant!r} of experiments/pairs.py; use '' (CPU) or 'full'")
  config = full_config() if variant == "full" else cpu_config()
  config.networks.subsets = "pairs"
  config.networks.half_size_singles = True
  config.selection.predict = "hoa"
  return config
