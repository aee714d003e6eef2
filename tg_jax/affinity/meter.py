"""TAG's affinities measured on a network while the trainer trains it (``config.tag``).

``tag.lookahead_affinity`` is the measurement on one batch; ``TagMeter`` takes it every
``config.tag.every_steps`` steps on the network ``tag_network(config)`` names, from that network's
state in its cohort's chunk, and keeps the running sum the checkpoint holds under ``TAG_STATE``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from tg_jax.affinity import tag as tag_lib
from tg_jax.training import cohort as cohort_lib
from tg_jax.training import cohorts as cohorts_lib
from tg_jax.training import networks as networks_lib

TAG_STATE = "tag_affinity"  # the checkpoint key of the TAG affinity sum


def tag_network(config: ml_collections.ConfigDict) -> networks_lib.Network:
  """The network ``config.tag`` measures affinities on (default: all tasks, equal weights, size 1)."""
  name = config.tag.network or networks_lib.Network(tuple(config.tasks), 1.0).name
  network = networks_lib.parse(name, config.tasks)
  if network.method or len(network.tasks) < 2:
    raise ValueError(f"tag.network {name!r}: TAG measures affinities between the tasks of an equal-weight "
                     f"network with at least two tasks; name one without ':method', e.g. "
                     f"{networks_lib.Network(tuple(config.tasks), 1.0).name!r}")
  return network


def measured_network(config: ml_collections.ConfigDict,
                     networks: Sequence[networks_lib.Network]) -> Optional[networks_lib.Network]:
  """``tag_network(config)``'s replica of the experiment's first seed (seed 0 unless
  ``networks.seeds`` lists others) when TAG is enabled, else None; an error if ``networks`` (the
  experiment's, all shards) do not include it. TAG measures one replica: its affinities average
  over the run's measurements, not over seeds."""
  if not config.tag.enabled:
    return None
  network = tag_network(config).replica(networks_lib.seeds(config)[0])
  if network not in networks:
    raise ValueError(f"tag.network {network.name!r} is not trained by this experiment; add it to "
                     f"config.networks.extra or name a listed network in tag.network")
  return network


class TagMeter:
  """TAG's lookahead affinities (``tg_jax.affinity.tag``) on one network while it trains.

  Every ``every_steps`` steps (from step 0), before the step's update, ``lookahead_affinity`` on
  the step's batch with the network's current parameters and learning rate; the sum
  (``AffinitySum``, ``[tasks, tasks]``) is part of the checkpoint, so a resumed run measures the same.
  """

  def __init__(self, network: networks_lib.Network, chunk: cohorts_lib.Chunk, image_shape: Sequence[int],
               every_steps: int, base_learning_rate: float, replicated: NamedSharding):
    """Measures ``network``, one of ``chunk``'s networks (its state is read there at each measurement)."""
    self.network = network
    self.every_steps = every_steps
    self._base_learning_rate = base_learning_rate
    self._replicated = replicated
    self._chunk, self._row = chunk, chunk.networks.index(network)
    self._shared_names = cohort_lib.shared_parameter_names(chunk.runner.model, image_shape)
    self._loss_fn = cohort_lib.lookahead_loss_fn(chunk.runner.model, network.tasks)
    self.affinity = jax.device_put(tag_lib.AffinitySum.zeros(len(network.tasks)), replicated)

  def load(self, affinity: tag_lib.AffinitySum) -> None:
    """Continues from a checkpoint's sum."""
    self.affinity = jax.device_put(affinity, self._replicated)

  def measure(self, step: int, batch: Mapping[str, jax.Array]) -> None:
    """Adds the affinities on ``batch`` if ``step`` is a measuring step; call before the step's update."""
    if step % self.every_steps:
      return
    state = self._chunk.state
    if int(state.diverged_step[self._row]) != cohort_lib.NOT_YET:
      return  # frozen at its last finite parameters: nothing more to learn from it
    row = lambda tree: jax.tree.map(lambda leaf: leaf[self._row], tree)
    shared, decoders = cohort_lib.split_shared(row(state.params), self._shared_names)
    learning_rate = self._base_learning_rate * cohort_lib.learning_rate_scale(state.opt_state)[self._row]
    affinity = tag_lib.lookahead_affinity(self._loss_fn, shared,
                                          {"params": decoders, "batch_stats": row(state.batch_stats)},
                                          batch, learning_rate)
    self.affinity = self.affinity.add(affinity)

  def summary(self, network_steps: int) -> dict[str, Any]:
    """What ``results/tag.json`` holds.

    ``lookahead_network_steps`` counts a forward pass as 1 and a backward pass as 2 units, so a
    training step is 3; a lookahead is one forward pass, one backward pass per task (the per-task
    gradients) and one forward pass per task (the losses after each step): ``(1 + 3 tasks) / 3``
    training steps.
    """
    count = int(self.affinity.count)
    num_tasks = len(self.network.tasks)
    return {"tasks": list(self.network.tasks), "affinity": np.asarray(self.affinity.mean()).tolist(),
            "measurements": count, "every_steps": self.every_steps, "network": self.network.name,
            "network_steps": network_steps, "lookahead_network_steps": count * (1 + 3 * num_tasks) / 3}
