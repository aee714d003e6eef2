"""The task declarations of the datasets and the losses they use."""

import jax.numpy as jnp
import numpy as np
import pytest

from tg_jax import tasks


@pytest.mark.parametrize("name,kind,channels", [
    ("segment_semantic", tasks.SEGMENTATION, 7),
    ("segment_semantic_taskonomy", tasks.SEGMENTATION, 18),
    ("depth", tasks.DENSE_REGRESSION, 1),
    ("normals", tasks.DENSE_REGRESSION, 3),
    ("keypoints2d", tasks.DENSE_REGRESSION, 1),
    ("edges2d", tasks.DENSE_REGRESSION, 1),
    ("edges3d", tasks.DENSE_REGRESSION, 1),
    ("reshading", tasks.DENSE_REGRESSION, 1),
    ("curvature", tasks.DENSE_REGRESSION, 2),
    ("autoencoder", tasks.DENSE_REGRESSION, 3),
    ("denoising", tasks.DENSE_REGRESSION, 3),
    ("5_o_clock_shadow", tasks.CLASSIFICATION, 2),
    ("wearing_hat", tasks.CLASSIFICATION, 2),
])
def test_declarations(name, kind, channels):
  task = tasks.get(name)
  assert (task.kind, task.channels) == (kind, channels)
  assert task.normalise_labels == (kind == tasks.DENSE_REGRESSION)
  assert task.loss is (tasks.l1_loss if kind == tasks.DENSE_REGRESSION else tasks.cross_entropy_loss)


def test_every_celeb_a_attribute_is_a_task():
  assert len(tasks.CELEB_A_ATTRIBUTES) == 40
  for attribute in tasks.CELEB_A_ATTRIBUTES:
    assert tasks.get(attribute.lower()).kind == tasks.CLASSIFICATION


def test_unknown_task_lists_the_known_ones():
  with pytest.raises(KeyError, match="unknown task 'dept'; known tasks: .*denoising, depth,"):
    tasks.get("dept")


def test_masked_losses_per_example():
  label = jnp.zeros((2, 4, 4, 1))
  prediction = label.at[0, 0, 0, 0].set(8.0).at[1].set(1.0)
  mask = jnp.ones((2, 4, 4)).at[0, 0, 0].set(0.0)
  np.testing.assert_allclose(tasks.get("depth").loss(prediction, label, None), [0.5, 1.0])
  np.testing.assert_allclose(tasks.get("depth").loss(prediction, label, mask), [0.0, 1.0])
  logits = jnp.zeros((2, 4, 4, 7)).at[..., 3].set(10.0)
  segment = jnp.full((2, 4, 4), 3).at[1, 0, 0].set(0)
  errors = tasks.get("segment_semantic").metric(logits, segment, None)
  np.testing.assert_allclose(errors, [0.0, 1 / 16])
  losses = tasks.get("segment_semantic").loss(logits, segment, jnp.ones((2, 4, 4)).at[1, 0, 0].set(0.0))
  np.testing.assert_allclose(losses, losses[0], rtol=1e-6)  # the masked wrong pixel does not count
