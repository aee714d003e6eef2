"""CelebA through TFDS's builder, with the data mocked by tfds.testing.mock_data (offline)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tg_jax import data
from tg_jax.data import celeb_a


def _config(tmp_path):
  manual_dir = tmp_path / "manual"
  manual_dir.mkdir()
  for name in celeb_a.MANUAL_FILES:
    (manual_dir / name).write_text("")
  config = data.default_config()
  config.name = "celeb_a"
  config.data_dir = str(tmp_path / "tfds")
  config.manual_dir = str(manual_dir)
  config.image_size = 24
  config.workers = 0
  return config


def test_attributes_are_binary_classification_tasks(tmp_path):
  config = _config(tmp_path)
  with tfds.testing.mock_data(num_examples=10, data_dir=config.data_dir):
    train = data.load(config, split="train")
    batch = next(train.train_batches(4, seed=0))
  assert train.tasks == celeb_a.DEFAULT_TASKS and len(train.tasks) == 9
  assert train.num_examples == 10
  assert batch["image"].shape == (4, 24, 24, 3) and batch["image"].dtype == np.float32
  for task in train.tasks:
    assert batch[task].shape == (4,) and batch[task].dtype == np.int32
    assert set(np.unique(batch[task])) <= {0, 1}
  assert train.label_stats == {}  # classification labels are not normalised


def test_labels_follow_the_attribute_flags():
  image = np.zeros((218, 178, 3), np.uint8)
  image[:20] = 255  # above the central 178x178 square: cropped away
  attributes = {name: name in ("Goatee", "Wearing_Hat") for name in celeb_a.ATTRIBUTES.values()}
  example = celeb_a.decode({"image": image, "attributes": attributes}, image_size=16)
  assert example["image"].shape == (16, 16, 3) and example["image"].max() == 0
  assert example["goatee"] == 1 and example["wearing_hat"] == 1 and example["black_hair"] == 0


def test_missing_manual_files_are_named(tmp_path):
  config = _config(tmp_path)
  (tmp_path / "manual" / "list_attr_celeba.txt").unlink()
  with pytest.raises(ValueError, match="(?s)lacks list_attr_celeba.txt.*<manual_dir>/img_align_celeba.zip"):
    data.load(config)
  config.manual_dir = None
  with pytest.raises(ValueError, match="celeb_a needs a manual directory"):
    data.load(config)
