"""`celeb_a`: TFDS's CelebA (manual download), with its binary attributes as classification tasks.

Every one of the 40 attributes is a task named in lower case (``tasks.CELEB_A_ATTRIBUTES``);
the default study uses the nine of Fifty et al. 2021. Images (218x178) are cropped to their
central square and resized to ``image_size`` when a batch is made.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from tg_jax import tasks as tasks_lib
from tg_jax.data import pipeline

ATTRIBUTES = {name.lower(): name for name in tasks_lib.CELEB_A_ATTRIBUTES}
TASKS = tuple(ATTRIBUTES)
DEFAULT_TASKS = ("5_o_clock_shadow", "black_hair", "blond_hair", "brown_hair", "goatee", "mustache",
                 "no_beard", "rosy_cheeks", "wearing_hat")
# The files TFDS's celeb_a builder takes from the manual directory instead of downloading them.
MANUAL_FILES = ("img_align_celeba.zip", "list_eval_partition.txt", "list_attr_celeba.txt",
                "list_landmarks_align_celeba.txt", "identity_CelebA.txt")
LAYOUT = ("Expected layout (the files of the CelebA release, as linked from "
          "http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html):\n"
          + "\n".join(f"  <manual_dir>/{name}" for name in MANUAL_FILES)
          + "\nthen pass --config.data.manual_dir=<manual_dir>.")


def check_manual_dir(manual_dir) -> str:
  """Returns the expanded ``manual_dir``, or raises naming the missing files and the layout."""
  if not manual_dir:
    raise ValueError(f"celeb_a needs a manual directory: set config.data.manual_dir.\n{LAYOUT}")
  manual_dir = os.path.expanduser(manual_dir)
  missing = [name for name in MANUAL_FILES if not os.path.exists(os.path.join(manual_dir, name))]
  if missing:
    raise ValueError(f"celeb_a: {manual_dir!r} lacks {', '.join(missing)}.\n{LAYOUT}")
  return manual_dir


def builder(config):
  return tfds.builder("celeb_a", data_dir=config.data_dir, file_format="array_record")


def prepare(config):
  """Builds the TFDS cache from the manual directory unless it is there already."""
  celeb_a = builder(config)
  if not celeb_a.is_prepared():
    manual_dir = check_manual_dir(config.manual_dir)
    # TFDS uses a file of the manual directory wherever its name matches a download.
    celeb_a.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return celeb_a


def available_tasks(prepared) -> tuple[str, ...]:
  del prepared
  return TASKS


def decode(example: dict, image_size: int) -> dict[str, np.ndarray]:
  """Central square crop, resize, and the attributes as int labels."""
  image = example["image"]
  height, width = image.shape[:2]
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  image = image[top:top + side, left:left + side]
  if side != image_size:
    image = np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.BILINEAR))
  attributes = example["attributes"]
  return {"image": image, **{task: np.int32(bool(attributes[name])) for task, name in ATTRIBUTES.items()}}


def open_split(prepared, split: str, config) -> pipeline.RecordSource:
  return pipeline.RecordSource(prepared.as_data_source(split), functools.partial(decode, image_size=config.image_size),
                               keys=("image",) + TASKS)
