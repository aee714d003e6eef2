"""Cross-stitch networks (Misra, Shrivastava, Gupta and Hebert, CVPR 2016) on the paper's encoder.

One encoder per task (a column: ``xception``'s encoder cut into its five stages). After every stage
but the last, a cross-stitch unit replaces each column's output by a learned linear mix of all
columns' outputs at that point:

    x_t <- sum_s alpha[t, s] x_s          (alpha: one [tasks, tasks] matrix per stage boundary)

and task ``t``'s head reads its own mix of the last stage's outputs, ``sum_s beta_t[s] x_s``. Every
``alpha`` and ``beta_t`` starts at the paper's best initialisation: ``self_weight`` (0.9) on the
column itself and the rest spread evenly over the others, so each row sums to one. LibMTL's
``Cross_stitch`` stitches after its ResNet layers 1 to 3 and initialises every weight to one; the
paper's learning-rate boost for the stitch weights is not used (they share the network's optimiser).

Shared (``encode``, what balancing methods weigh): every column and the inner stitches, since every
task's loss reaches all of them. Task-specific (``decode``): ``beta_t`` and the head. Cost
(``features``): every column, so a ``k``-task network at size ``s`` has ``k`` columns of about
``s / k`` standard networks each.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from tg_jax.models import backbone


def default_config(scale: str = "cpu") -> ml_collections.ConfigDict:
  """xception's config (``scale``: ``"cpu"`` or ``"paper"``) named ``cross_stitch``, plus
  ``self_weight``: the initial weight of a column on itself in every stitch (Misra et al.'s 0.9)."""
  config = backbone.default_config(scale, "cross_stitch")
  config.self_weight = 0.9
  return config


def stitch_init(self_weight: float):
  """Initialiser of a stitch's ``[..., tasks]`` weights: ``self_weight`` where the row's column is
  the last axis's own (the diagonal; for a ``[tasks]`` row, its ``index``), the rest spread evenly."""
  def init(key, shape, dtype=jnp.float32, index=None):
    del key
    num_tasks = shape[-1]
    if num_tasks == 1:
      return jnp.ones(shape, dtype)
    other = (1.0 - self_weight) / (num_tasks - 1)
    own = jnp.eye(num_tasks, dtype=dtype) if index is None else jax.nn.one_hot(index, num_tasks, dtype=dtype)
    return other + (self_weight - other) * own
  return init


class OutputStitch(nn.Module):
  """One task's mix of the columns' last outputs: ``[tasks, ...] -> [...]`` (its own submodule, so its
  weights exist only where the task's ``decode`` runs, not in ``encode``'s shared parameters)."""

  index: int
  self_weight: float

  @nn.compact
  def __call__(self, columns: jax.Array) -> jax.Array:
    init = stitch_init(self.self_weight)
    beta = self.param("weights", lambda key, shape: init(key, shape, index=self.index), (columns.shape[0],))
    return jnp.einsum("s,s...->...", beta.astype(columns.dtype), columns)


class CrossStitchNet(backbone.TaskFeatureNet):
  """``len(tasks)`` columns (``columns_<column>_<stage>``), stitches ``stitch_<boundary>`` between stages,
  each task's output stitch ``output_stitch_<task>`` and the heads.

  Attributes:
    tasks: task names; with ``heads=None`` only labels (the network built to measure its cost).
    encoder: each column's encoder at this network's widths.
    heads: ``backbone.heads`` (``decoder_<task>`` for each task), or ``None``.
    self_weight: the stitches' initial weight of a column on itself.
  """

  tasks: tuple[str, ...]
  encoder: backbone.Encoder
  heads: Optional[nn.Module]
  self_weight: float = 0.9
  dtype: Any = jnp.float32

  def setup(self):
    num_tasks = len(self.tasks)
    init = stitch_init(self.self_weight)
    self.columns = [backbone.stages(self.encoder, self.dtype) for _ in self.tasks]
    self.stitches = [self.param(f"stitch_{boundary}", init, (num_tasks, num_tasks))
                     for boundary in range(backbone.NUM_STAGES - 1)]
    self.output_stitches = {task: OutputStitch(i, self.self_weight, name=f"output_stitch_{task}")
                            for i, task in enumerate(self.tasks)}

  def encode(self, images: jax.Array, train: bool) -> jax.Array:
    """Images ``[b, h, w, c]`` -> every column's last output ``[tasks, b, h/d, w/d, representation_width]``."""
    columns = [images] * len(self.tasks)
    for stage in range(backbone.NUM_STAGES):
      columns = [column[stage](x, train) for column, x in zip(self.columns, columns)]
      if stage < backbone.NUM_STAGES - 1:
        stacked = jnp.stack(columns)
        alpha = self.stitches[stage].astype(stacked.dtype)
        columns = list(jnp.einsum("ts,s...->t...", alpha, stacked))
    return jnp.stack(columns)

  def task_features(self, task: str, columns: jax.Array, train: bool) -> jax.Array:
    """Task ``task``'s head input ``[b, h/d, w/d, representation_width]``: its stitch of the columns."""
    del train  # the output stitch has no batch statistics
    return self.output_stitches[task](columns)


def _check(config: ml_collections.ConfigDict) -> None:
  if not 0.0 <= config.self_weight <= 1.0:
    raise ValueError(f"model.self_weight must lie in [0, 1] (a column's initial share of its own stitch); "
                     f"got {config.self_weight}")


def make(config: ml_collections.ConfigDict, tasks: Sequence[str], width_multiplier: float,
         dtype: Any = jnp.float32) -> CrossStitchNet:
  """The cross-stitch network for ``tasks``, each column's widths scaled by ``width_multiplier``."""
  _check(config)
  return CrossStitchNet(tuple(tasks), backbone.encoder(config, width_multiplier),
                        backbone.heads(config, tasks, dtype), config.self_weight, dtype)


def before_heads(config: ml_collections.ConfigDict, num_tasks: int, width_multiplier: float) -> CrossStitchNet:
  """A ``num_tasks``-task cross-stitch network without heads, whose ``features`` FLOPs are its cost."""
  _check(config)
  return CrossStitchNet(backbone.cost_task_names(num_tasks), backbone.encoder(config, width_multiplier), None,
                        config.self_weight)
