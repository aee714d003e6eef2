"""Small stand-ins for the trainer's tests: toy tasks, an in-memory dataset, a tiny config.

The dataset is registered as ``fake`` (``tg_jax.data.register``), so ``data.load`` returns it for
``tiny_config()``'s ``config.data``. It is read through ``tg_jax.data``'s pipeline (grain; batches
depend only on ``(seed, step)``, evaluation pads with weight 0, streams save their state in
checkpoints) and has learnable labels computed from the images, so tests can check that training
lowers losses without building the real dataset.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from tg_jax import data
from tg_jax.data import pipeline
from tg_jax import models
from tg_jax import tasks as tasks_lib
from tg_jax.training import config as config_lib

TOY_TASKS = ("toy_depth", "toy_normals", "toy_segment")
tasks_lib.dense_regression("toy_depth", 1, "test task: blurred image brightness")
tasks_lib.dense_regression("toy_normals", 3, "test task: the image's colour channels")
tasks_lib.segmentation("toy_segment", 3, "test task: the brightest colour channel")

IMAGE_SIZE = 16


def _make_split(num_examples: int, seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, size=(num_examples, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
  images = pixels / 255.0
  brightness = images.mean(axis=-1, keepdims=True)
  depth = 0.5 * (brightness + np.roll(brightness, 1, axis=1))
  return {
      "image": pixels,
      "toy_depth": depth.astype(np.float32),
      "toy_normals": images[..., ::-1].astype(np.float32),
      "toy_segment": np.argmax(images, axis=-1).astype(np.int32),
  }


@functools.cache
def _training_stats() -> dict:
  """Every split's normalisation, from a training split (as the pipeline's are)."""
  return pipeline.compute_stats(pipeline.ArraySource(_make_split(128, 0)), TOY_TASKS, max_examples=128)


class _Observed:
  """Batches, each shown to ``on_step(step, batch)`` first; the stream's state is the batches'."""

  def __init__(self, batches: pipeline.Batches, on_step):
    self._batches = batches
    self._on_step = on_step

  def __iter__(self):
    return self

  def __next__(self):
    step = self._batches.next_step
    batch = next(self._batches)
    self._on_step(step, batch)
    return batch

  def get_state(self) -> bytes:
    return self._batches.get_state()


class FakeDataset(pipeline.Dataset):
  """An in-memory split read through ``tg_jax.data``'s pipeline (normalised with its own statistics)."""

  def __init__(self, tasks, split: str, num_examples: int, on_step=None):
    """``on_step(step, batch)``, if given, sees (and may change) each training batch first."""
    source = pipeline.ArraySource(_make_split(num_examples, {"train": 0, "validation": 1, "test": 2}[split]))
    super().__init__(name="fake", split=split, source=source, task_names=tasks, stats=_training_stats(),
                     image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    self._on_step = on_step

  def train_batches(self, batch_size, **kwargs):
    batches = super().train_batches(batch_size, **kwargs)
    return batches if self._on_step is None else _Observed(batches, self._on_step)


class FakeData:
  """The ``fake`` dataset as ``tg_jax.data`` registers it: in memory, sized by ``config.data``'s
  ``num_train``, ``num_val`` and ``num_test``.

  ``on_step(step, batch)``, if set (``monkeypatch.setattr(train_fakes.FAKE_DATA, "on_step", f)``),
  sees (and may change) each training batch first.
  """

  TASKS = TOY_TASKS
  DEFAULT_TASKS = TOY_TASKS
  CONFIG_KEYS = ("num_train", "num_val", "num_test")

  def __init__(self):
    self.on_step = None

  def load(self, config: ml_collections.ConfigDict, tasks, split: str) -> FakeDataset:
    sizes = {"train": config.num_train, "validation": config.num_val, "test": config.num_test}
    return FakeDataset(tasks, split, sizes[split], self.on_step if split == "train" else None)


FAKE_DATA = FakeData()
data.register("fake", FAKE_DATA)


class ToyNet(nn.Module):
  """A one-convolution encoder (with batch norm) and a one-convolution decoder per task.

  Registered as model family ``toy_conv`` so trainer tests compile in a second, not a minute.
  """

  tasks: tuple[str, ...]
  width: int
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder_conv = nn.Conv(self.width, (3, 3), dtype=self.dtype)
    self.encoder_norm = nn.BatchNorm(momentum=0.9, dtype=self.dtype)
    self.decoders = {t: nn.Conv(tasks_lib.get(t).channels, (3, 3), dtype=self.dtype, name=f"decoder_{t}")
                     for t in self.tasks}

  def encode(self, images, train: bool):
    return nn.relu(self.encoder_norm(self.encoder_conv(images), use_running_average=not train))

  def decode(self, task, representation, train: bool):
    del train  # no batch statistics in the toy decoders
    return self.decoders[task](representation).astype(jnp.float32)

  def __call__(self, images, train: bool):
    representation = self.encode(images, train)
    return {t: self.decode(t, representation, train) for t in self.tasks}


def _toy_config(scale: str) -> ml_collections.ConfigDict:
  del scale
  return ml_collections.ConfigDict({"name": "toy_conv", "width": 8, "cost_image_size": IMAGE_SIZE})


def _make_toy(config, tasks, width_multiplier, dtype):
  return ToyNet(tuple(tasks), max(1, round(config.width * width_multiplier)), dtype)


models.register("toy_conv", models.ModelFamily(default_config=_toy_config, make=_make_toy))


def tiny_config() -> ml_collections.ConfigDict:
  """The base config on toy tasks and the toy model: 9 networks (singles, pairs, half-size
  singles), 2 steps per epoch, 4 epochs."""
  config = config_lib.base_config()
  config.tasks = TOY_TASKS
  config.data = ml_collections.ConfigDict({"name": "fake", "num_train": 128, "num_val": 40, "num_test": 40})
  config.model = _toy_config("cpu")
  config.batch_size = 16
  config.eval_batch_size = 16
  config.epoch_fraction = 0.25
  config.num_epochs = 4
  config.esa_fraction = 0.5
  config.optimizer.learning_rate = 0.05
  config.num_devices = 1
  config.baseline_batches = 4
  config.log_every_steps = 2
  return config
