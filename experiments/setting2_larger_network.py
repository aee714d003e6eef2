"""The paper's setting 2: setting 1's five tasks with a larger standard network.

  python -m tg_jax.main --config=experiments/setting2_larger_network.py          # 2-core CPU
  python -m tg_jax.main --config=experiments/setting2_larger_network.py:full     # GPUs

Every task subset and half-size singles (Optimal, ESA and HOA from one run, as
``experiments/all_subsets.py``), two seeds, with the encoder widened: on CPU twice the CPU preset's
widths; in the full variant the widths of the authors' larger network (``xception_taskonomy_new``:
32, 64, 128, 256 and 728 channels, eight middle blocks) instead of their small one. Costs stay in
units of this setting's own standard network, as the paper's do.
"""

import ml_collections

from tg_jax.training import config as config_lib

# The authors' xception_taskonomy_new encoder (their setting 2), against xception_taskonomy_small's
# (24, 48, 96, 192, 512) with four middle blocks in the "paper" preset.
FULL_ENCODER_WIDTHS = (32, 64, 128, 256, 728)
FULL_MIDDLE_BLOCKS = 8
CPU_WIDTH_FACTOR = 2


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  variant = config_lib.parse_variant(arg)
  config = config_lib.base_config(variant)
  config.networks.subsets = "all"
  config.networks.seeds = 2
  config.selection.predict = "none"
  if variant == config_lib.FULL:
    config.model.encoder_widths = FULL_ENCODER_WIDTHS
    config.model.middle_blocks = FULL_MIDDLE_BLOCKS
  else:
    config.model.encoder_widths = tuple(CPU_WIDTH_FACTOR * w for w in config.model.encoder_widths)
    config.model.representation_width *= CPU_WIDTH_FACTOR
  return config
