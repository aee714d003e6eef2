"""The task registry: every task is declared once here and looked up by name.

A task fixes what a network's decoder for it outputs and how that output is scored:

- ``dense_regression``: labels ``[batch, h, w, channels]`` float32, normalised to zero mean and
  unit standard deviation with training-split statistics; L1 loss (the paper's choice).
- ``segmentation``: labels ``[batch, h, w]`` int32 class ids; per-pixel cross-entropy over
  ``channels`` classes.
- ``classification``: labels ``[batch]`` int32 class ids; cross-entropy over ``channels`` classes.

Every loss takes an optional validity mask (``[batch, h, w]`` for dense tasks, ``[batch]`` for
classification; Taskonomy's labels have holes) and returns one loss per example, ``[batch]``,
so evaluation can average over a split exactly and training over a batch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

DENSE_REGRESSION = "dense_regression"
SEGMENTATION = "segmentation"
CLASSIFICATION = "classification"
KINDS = (DENSE_REGRESSION, SEGMENTATION, CLASSIFICATION)


def _masked_mean_per_example(values: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  """Mean over all but the leading axis, counting only pixels where ``mask`` is 1."""
  axes = tuple(range(1, values.ndim))
  if mask is None:
    return jnp.mean(values, axis=axes)
  mask = mask.astype(values.dtype)
  total = jnp.sum(values * mask, axis=axes)
  # An example whose mask is empty contributes zero loss rather than NaN.
  return total / jnp.maximum(jnp.sum(mask, axis=axes), 1.0)


def l1_loss(prediction: jax.Array, label: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
  """Per-example mean absolute error; ``prediction``/``label`` are ``[b, h, w, c]``."""
  error = jnp.abs(prediction.astype(jnp.float32) - label.astype(jnp.float32))
  per_pixel = jnp.mean(error, axis=-1)
  return _masked_mean_per_example(per_pixel, mask)


def cross_entropy_loss(logits: jax.Array, label: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
  """Per-example mean cross-entropy; ``logits`` ``[b, ..., classes]``, ``label`` ``[b, ...]`` ids."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, label[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return _masked_mean_per_example(-picked, mask)


def error_rate(logits: jax.Array, label: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
  """Per-example fraction of wrongly classified pixels (or examples)."""
  wrong = (jnp.argmax(logits, axis=-1) != label).astype(jnp.float32)
  if wrong.ndim == 1:
    wrong = wrong[:, None]
    mask = None if mask is None else mask[:, None]
  return _masked_mean_per_example(wrong, mask)


@dataclasses.dataclass(frozen=True)
class Task:
  """One task: what its decoder outputs and how that output is scored.

  Attributes:
    name: registry key, used in configs and results tables.
    kind: one of ``KINDS``.
    channels: decoder output channels (classes for segmentation/classification).
    loss: ``(output, label, mask) -> [batch]`` per-example loss; lower is better.
    metric: ``(output, label, mask) -> [batch]`` per-example metric for reports.
    metric_name: what ``metric`` measures, for reports.
    normalise_labels: whether labels are standardised with training-split statistics.
    description: one line for ``--help`` texts and reports.
  """

  name: str
  kind: str
  channels: int
  loss: Callable[..., jax.Array]
  metric: Callable[..., jax.Array]
  metric_name: str
  normalise_labels: bool
  description: str = ""

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"task {self.name!r}: unknown kind {self.kind!r}; known kinds: {', '.join(KINDS)}")
    if self.channels < 1:
      raise ValueError(f"task {self.name!r}: channels must be >= 1, got {self.channels}")

  @property
  def is_dense(self) -> bool:
    return self.kind != CLASSIFICATION


_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
  """Adds ``task`` to the registry; re-registering an identical task is a no-op."""
  existing = _REGISTRY.get(task.name)
  if existing is not None and existing != task:
    raise ValueError(f"task {task.name!r} is already registered with a different definition")
  _REGISTRY[task.name] = task
  return task


def dense_regression(name: str, channels: int, description: str) -> Task:
  return register(Task(name, DENSE_REGRESSION, channels, l1_loss, l1_loss, "L1 (normalised units)",
                       normalise_labels=True, description=description))


def segmentation(name: str, classes: int, description: str) -> Task:
  return register(Task(name, SEGMENTATION, classes, cross_entropy_loss, error_rate, "pixel error rate",
                       normalise_labels=False, description=description))


def classification(name: str, classes: int, description: str) -> Task:
  return register(Task(name, CLASSIFICATION, classes, cross_entropy_loss, error_rate, "error rate",
                       normalise_labels=False, description=description))


def get(name: str) -> Task:
  """Looks a task up by name, with an error that lists the known ones."""
  try:
    return _REGISTRY[name]
  except KeyError:
    raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_REGISTRY))}") from None


def names() -> list[str]:
  return sorted(_REGISTRY)


# ---------------------------------------------------------------------------------------------
# The tasks of the datasets in `tg_jax.data`. Names follow Taskonomy's; a task shared by several
# datasets is declared once, with its statistics stored per dataset. Only semantic segmentation
# differs in class count between datasets, so each dataset's version gets its own name.

SYNTHETIC_SCENE_CLASSES = 7  # tg_jax.data.render.CLASS_NAMES: floor, wall, ceiling, sphere, box, cylinder, cone
TASKONOMY_SEMANTIC_CLASSES = 18  # Taskonomy's 17 COCO indoor classes and 0 = unlabelled (masked out)

segmentation("segment_semantic", SYNTHETIC_SCENE_CLASSES,
             "semantic segmentation of rendered scenes: surface or primitive class per pixel")
segmentation("segment_semantic_taskonomy", TASKONOMY_SEMANTIC_CLASSES,
             "Taskonomy semantic segmentation (17 indoor object classes; unlabelled pixels masked)")
dense_regression("depth", 1, "z-buffer depth in metres")
dense_regression("normals", 3, "surface normals in camera coordinates")
dense_regression("keypoints2d", 1, "2D keypoint (corner detector) response on the RGB image")
dense_regression("edges2d", 1, "2D texture edges: gradient magnitude of the RGB image")
dense_regression("edges3d", 1, "3D occlusion and crease edges from the geometry")
dense_regression("reshading", 1, "shading with a light at the camera, without albedo")
dense_regression("curvature", 2, "principal curvatures k1 >= k2")
dense_regression("autoencoder", 3, "reconstruct the input image")
dense_regression("denoising", 3, "the input image without its sensor noise")

# CelebA's 40 binary attributes, as in its list_attr_celeba.txt; task names are lower case.
CELEB_A_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young")
for _attribute in CELEB_A_ATTRIBUTES:
  classification(_attribute.lower(), 2, f"CelebA attribute {_attribute} (binary)")
del _attribute
