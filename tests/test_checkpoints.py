"""The checkpointer's packed state: what it saves comes back exactly, placed as the target says."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tg_jax.training import checkpoints


def _state():
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rng = np.random.default_rng(0)
  state = {"cohort_a": {"params": {"kernel": rng.normal(size=(3, 4, 5)).astype(np.float32),
                                   "bias": rng.normal(size=(3, 5)).astype(np.float32)},
                        "best_step": np.arange(3, dtype=np.int32),
                        "mask": np.array([[True, False], [False, True], [True, True]])},
           "cohort_b": {"params": {"kernel": rng.normal(size=(2, 7)).astype(np.float32)},
                        "step": np.int32(11)}}
  state = jax.tree.map(lambda leaf: jax.device_put(leaf, replicated), state)
  # A balancing method's random state (e.g. random loss weighting's) is an array of typed PRNG keys.
  state["cohort_b"]["balancer_key"] = jax.device_put(jax.random.split(jax.random.key(1), 3), replicated)
  return state


def _equal(restored, expected):
  def raw(leaf):
    return np.asarray(jax.random.key_data(leaf) if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf)
  pairs = zip(jax.tree.leaves(restored), jax.tree.leaves(expected))
  return all(a.dtype == b.dtype and np.array_equal(raw(a), raw(b)) for a, b in pairs)


def test_a_packed_checkpoint_restores_every_array_exactly_into_arrays_or_abstract_targets(tmp_path):
  state = _state()
  checkpointer = checkpoints.Checkpointer(str(tmp_path))
  checkpointer.save(7, state, {"step": 7, "networks": ["a", "b"]})
  assert checkpointer.latest_intact_step() == 7
  # One array per dtype, not one per leaf.
  saved = ocp.StandardCheckpointer().restore(tmp_path / "7" / "state")
  assert sorted(saved) == ["bool", "float32", "int32", "uint32"]

  restored, progress = checkpointer.restore(7, state)
  assert progress == {"step": 7, "networks": ["a", "b"]}
  assert _equal(restored, state)
  abstract = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding), state)
  restored, _ = checkpointer.restore(7, abstract)
  assert _equal(restored, state)
  assert all(leaf.sharding == target.sharding for leaf, target in zip(jax.tree.leaves(restored), jax.tree.leaves(state)))
  checkpointer.close()


def test_a_checkpoint_of_other_arrays_is_refused_naming_the_first_difference(tmp_path):
  state = _state()
  checkpointer = checkpoints.Checkpointer(str(tmp_path))
  checkpointer.save(1, state, {"step": 1, "networks": []})
  other = jax.tree.map(lambda leaf: leaf, state)
  other["cohort_b"]["params"]["kernel"] = jnp.zeros((2, 8), jnp.float32)
  with pytest.raises(checkpoints.ConfigMismatchError, match=r"\['cohort_b'\]\['params'\]\['kernel'\] float32\[2, 7\]"):
    checkpointer.restore(1, other)
  checkpointer.close()


def test_a_checkpoint_saved_array_by_array_before_packing_still_restores(tmp_path):
  state = _state()
  manager = ocp.CheckpointManager(str(tmp_path), options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False),
                                  item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                 "progress": ocp.JsonCheckpointHandler()})
  manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          progress=ocp.args.JsonSave({"step": 3, "networks": []})))
  manager.close()
  assert not os.path.exists(tmp_path / "3" / "layout")
  checkpointer = checkpoints.Checkpointer(str(tmp_path))
  assert checkpointer.latest_intact_step() == 3
  restored, progress = checkpointer.restore(3, state)
  assert progress["step"] == 3 and _equal(restored, state)
  checkpointer.close()
