"""The ray caster's labels against geometry worked out by hand."""

import numpy as np
import pytest

from tg_jax.data import render

SIZE = 17  # odd, so the centre pixel's ray is the camera axis; one size means one compilation


def _views(camera, target, objects=(), fov_degrees=40.0, room=(10.0, 4.0, 10.0)):
  """One view of a plain grey room holding ``objects``: (class, centre, angle, size) tuples."""
  present = np.zeros(render.NUM_SLOTS, bool)
  centre = np.zeros((render.NUM_SLOTS, 3))
  angle = np.zeros(render.NUM_SLOTS)
  size = np.ones((render.NUM_SLOTS, 3))
  for cls, at, rotation, extent in objects:
    slot = next(k for k, c in enumerate(render.SLOT_CLASSES) if c == cls and not present[k])
    present[slot], centre[slot], angle[slot], size[slot] = True, at, rotation, extent
  rows = 3 + render.NUM_SLOTS
  grey = np.full((rows, 3), 0.5)
  materials = dict(colour_a=grey, colour_b=grey, pattern=np.zeros(rows, int), frequency=np.ones(rows),
                   axis=np.tile([1.0, 0, 0], (rows, 1)), axis2=np.tile([0, 0, 1.0], (rows, 1)),
                   phase=np.zeros((rows, 2)), shininess=np.full(rows, 8.0), specular=np.zeros(rows))
  view = dict(room=np.array(room), camera=np.array(camera, float), target=np.array(target, float),
              fov=np.deg2rad(fov_degrees), light=np.array([0.0, 3.5, 0.0]), light_colour=np.ones(3),
              ambient=0.3, noise_std=0.05, present=present, centre=centre, angle=angle, size=size,
              materials=materials, noise_seed=0)
  return render.stack_views([view])


def _render(views, shadows=True):
  return {k: v[0] for k, v in render.render_views(views, SIZE, SIZE, shadows).items()}


def _centre(labels, key):
  return labels[key][SIZE // 2, SIZE // 2]


@pytest.mark.parametrize("cls,extent,angle,expected_depth,expected_curvature", [
    (render.SPHERE, (0.5, 0.5, 0.5), 0.0, 2.5, (2.0, 2.0)),
    (render.BOX, (0.5, 0.5, 0.5), 0.0, 2.5, (0.0, 0.0)),
    (render.BOX, (0.5, 0.5, 0.5), np.pi / 4, 3 - 0.5 * np.sqrt(2), (0.0, 0.0)),
    (render.CYLINDER, (0.4, 0.5, 0.4), 0.3, 2.6, (2.5, 0.0)),
])
def test_object_in_front_of_camera(cls, extent, angle, expected_depth, expected_curvature):
  # Camera at z = 3 looking down -z at an object centred on the axis, 1 m above the floor.
  labels = _render(_views(camera=(0, 1, 3), target=(0, 1, 0), objects=[(cls, (0, 1, 0), angle, extent)]))
  assert _centre(labels, "segment_semantic") == cls
  np.testing.assert_allclose(_centre(labels, "depth"), [expected_depth], atol=1e-4)
  if angle == 0.0 or cls != render.BOX:
    # A face or surface point looking straight back at the camera.
    np.testing.assert_allclose(_centre(labels, "normals"), [0, 0, 1], atol=1e-4)
    np.testing.assert_allclose(_centre(labels, "reshading"), [1.0], atol=1e-4)
  np.testing.assert_allclose(_centre(labels, "curvature"), expected_curvature, atol=1e-4)


def test_cone_side_tilts_up():
  # Base radius 0.5 at y = 0, apex at y = 1: at mid height the radius is 0.25.
  labels = _render(_views(camera=(0, 0.5, 3), target=(0, 0.5, 0),
                          objects=[(render.CONE, (0, 0.5, 0), 0.0, (0.5, 0.5, 0.5))]))
  assert _centre(labels, "segment_semantic") == render.CONE
  np.testing.assert_allclose(_centre(labels, "depth"), [2.75], atol=1e-4)
  # Side normal ~ (0, k^2 (h - y), z) = (0, 0.125, 0.25), normalised.
  np.testing.assert_allclose(_centre(labels, "normals"), np.array([0, 0.125, 0.25]) / np.hypot(0.125, 0.25),
                             atol=1e-4)


def test_floor_seen_at_45_degrees():
  labels = _render(_views(camera=(0, 1, 0), target=(0, 0, -1)))
  assert _centre(labels, "segment_semantic") == render.FLOOR
  np.testing.assert_allclose(_centre(labels, "depth"), [np.sqrt(2)], atol=1e-4)
  # World up in a camera pitched down by 45 degrees.
  np.testing.assert_allclose(_centre(labels, "normals"), [0, np.sqrt(0.5), np.sqrt(0.5)], atol=1e-4)
  # A plane has no 3D edges away from where it meets other surfaces.
  assert _centre(labels, "edges3d")[0] < 1e-3


def test_labels_are_consistent_on_random_scenes():
  size = SIZE
  views = render.stack_views([v for i in range(6) for v in render.sample_views((7, 0, i), 2)])
  labels = render.render_views(views, size, size)
  normals = labels["normals"]
  np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-4)
  # Every visible surface faces the camera: n . (-ray) > 0, with rays in camera coordinates.
  tan_half = np.tan(views.fov / 2)[:, None, None]
  centres = (np.arange(size) + 0.5) / size * 2 - 1
  rays = np.stack(np.broadcast_arrays(centres[None, None, :] * tan_half, -centres[None, :, None] * tan_half,
                                      -np.ones((1, 1, 1))), axis=-1)
  rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
  assert ((normals * -rays).sum(-1) > 0).all()
  assert set(np.unique(labels["segment_semantic"])) <= set(range(render.NUM_CLASSES))
  assert (labels["depth"] > 0).all() and (labels["curvature"] >= 0).all()
  # Room surfaces are flat; only objects curve.
  room = labels["segment_semantic"] <= render.CEILING
  assert (labels["curvature"][room] == 0).all()
  assert ((labels["edges3d"] >= 0) & (labels["edges3d"] <= 1)).all()
  # Texture and shadows make 2D edges differ from 3D ones.
  correlation = np.corrcoef(labels["edges2d"].ravel(), labels["edges3d"].ravel())[0, 1]
  assert correlation < 0.8
  # The input is the clean render plus noise.
  difference = labels["rgb"].astype(float) - labels["clean_rgb"]
  assert 2 < difference.std() < 40


def test_rendering_is_deterministic_and_independent_of_the_batch():
  together = render.render_scenes([(3, 1, i) for i in range(5)], 2, SIZE)
  again = render.render_scenes([(3, 1, i) for i in range(5)], 2, SIZE)
  alone = render.render_scenes([(3, 1, 4)], 2, SIZE)
  for key in together:
    np.testing.assert_array_equal(together[key], again[key])
    np.testing.assert_allclose(together[key][-2:].astype(float), alone[key].astype(float), atol=1e-5)
  other_seed = render.render_scenes([(4, 1, 4)], 2, SIZE)
  assert not np.array_equal(other_seed["rgb"], alone["rgb"])


def test_shadows_only_darken():
  views = render.stack_views(render.sample_views((5, 0, 0), 4))
  lit = render.render_views(views, SIZE, SIZE, shadows=False)["clean_rgb"].astype(int)
  shadowed = render.render_views(views, SIZE, SIZE, shadows=True)["clean_rgb"].astype(int)
  assert (shadowed <= lit).all()
  assert (shadowed < lit).any()


def test_2d_detectors_on_a_white_square():
  image = np.zeros((1, 20, 20), np.float32)
  image[:, 6:14, 6:14] = 1.0
  corners = render.corner_response(image)[0]
  edges = render.texture_edges(image)[0]
  # Strongest corner response at a corner, none on a straight edge's middle or flat areas.
  peak = np.unravel_index(np.argmax(corners), corners.shape)
  assert min(abs(peak[0] - 6), abs(peak[0] - 13)) <= 1 and min(abs(peak[1] - 6), abs(peak[1] - 13)) <= 1
  assert corners[10, 6] < 0.1 * corners.max() and corners[10, 10] < 1e-6
  assert edges[10, 6] > 0.3 and edges[10, 10] < 1e-6 and edges[1, 1] < 1e-6
