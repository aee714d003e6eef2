"""A vectorised ray caster for procedural rooms, with dense labels from the geometry.

A scene is a box-shaped room (floor, four walls, ceiling) holding a few primitives (spheres,
boxes, cylinders, cones) that rest on the floor, each with a random pose, size, colour and
procedural texture, lit by one point light. Scenes are sampled with numpy; ``render_views``
casts the rays of a chunk of views at once with analytic intersections over arrays
``[views, object slots, pixels]``, in one function jitted by JAX and run on the CPU (XLA fuses
the elementwise work, which numpy would do one temporary array at a time).

Besides the (noisy) RGB input, every view yields the labels of the Taskonomy-like tasks:

- ``segment_semantic`` ``[h, w]`` uint8: the class of the surface hit (``CLASS_NAMES``).
- ``depth`` ``[h, w, 1]``: z-buffer depth in metres (distance along the camera axis).
- ``normals`` ``[h, w, 3]``: unit surface normals in camera coordinates (x right, y up,
  z towards the viewer, so visible surfaces have z > 0).
- ``keypoints2d`` ``[h, w, 1]``: a Shi-Tomasi corner response on the clean RGB.
- ``edges2d`` ``[h, w, 1]``: the Sobel gradient magnitude of the clean RGB.
- ``edges3d`` ``[h, w, 1]``: occlusion and crease edges, from jumps of inverse depth and normals.
- ``reshading`` ``[h, w, 1]``: Lambertian shading with a light at the camera, no albedo.
- ``curvature`` ``[h, w, 2]``: principal curvatures (k1 >= k2) in 1/metre.
- ``clean_rgb`` ``[h, w, 3]`` uint8: the render before sensor noise (the denoising target);
  ``rgb`` ``[h, w, 3]`` uint8 is the noisy input (the auto-encoding target).

Textures and cast shadows put edges and corners into the RGB that the geometry does not have,
and boxes and creases put edges into the geometry that plain surfaces do not show, so the 2D
and 3D tasks are related without being the same task.

Determinism: every scene's parameters (and the seed of its sensor noise) come from
``np.random.default_rng(scene_key)``, and the pixels of a view depend only on its own
parameters, so a view renders identically whatever batch it is rendered in.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

# Bump when a change to this file changes any rendered pixel; dataset caches are keyed on it.
RENDERER_VERSION = "1.2.0"

CLASS_NAMES = ("floor", "wall", "ceiling", "sphere", "box", "cylinder", "cone")
NUM_CLASSES = len(CLASS_NAMES)
FLOOR, WALL, CEILING, SPHERE, BOX, CYLINDER, CONE = range(NUM_CLASSES)

PLAIN, CHECKERS, STRIPES, BLOTCHES = range(4)
# Object slots have fixed classes, so the ray caster runs each intersection formula only on the
# slots of its class; a scene fills between MIN_OBJECTS and MAX_OBJECTS of them.
SLOT_CLASSES = (SPHERE, SPHERE, BOX, BOX, CYLINDER, CYLINDER, CONE, CONE)
NUM_SLOTS = len(SLOT_CLASSES)
MIN_OBJECTS, MAX_OBJECTS = 3, 6
_EPS = 1e-4
_FAR = np.float32(1e6)
_CURVATURE_CLIP = 20.0  # 1/m; the cone apex is a singularity.


@dataclasses.dataclass(frozen=True)
class Materials:
  """Surface appearance, one row per surface: ``[..., 3]`` colours and pattern parameters."""

  colour_a: np.ndarray  # [..., 3] in [0, 1]
  colour_b: np.ndarray  # [..., 3]
  pattern: np.ndarray  # [...] int, one of PLAIN/CHECKERS/STRIPES/BLOTCHES
  frequency: np.ndarray  # [...] pattern cycles per metre
  axis: np.ndarray  # [..., 3] unit stripe direction
  axis2: np.ndarray  # [..., 3] second unit direction for blotches
  phase: np.ndarray  # [..., 2]
  shininess: np.ndarray  # [...] Blinn-Phong exponent
  specular: np.ndarray  # [...] specular weight


@dataclasses.dataclass(frozen=True)
class Views:
  """Parameters of ``n`` views; ``K = NUM_SLOTS`` object slots of classes ``SLOT_CLASSES``.

  Room surfaces use material rows 0 (floor), 1 (walls) and 2 (ceiling); object ``k`` row 3 + k.
  """

  room: np.ndarray  # [n, 3] width (x), height (y), depth (z); the room spans
                    # x in [-w/2, w/2], y in [0, h], z in [-d/2, d/2]
  camera: np.ndarray  # [n, 3] position
  target: np.ndarray  # [n, 3] point the camera looks at
  fov: np.ndarray  # [n] horizontal field of view, radians
  light: np.ndarray  # [n, 3] point light position
  light_colour: np.ndarray  # [n, 3]
  ambient: np.ndarray  # [n]
  noise_std: np.ndarray  # [n] sensor noise added to the input image
  present: np.ndarray  # [n, K] bool, whether the slot holds an object
  centre: np.ndarray  # [n, K, 3]
  angle: np.ndarray  # [n, K] rotation about the vertical axis, radians
  size: np.ndarray  # [n, K, 3] sphere: (r, r, r); box: half extents; cylinder/cone: (r, h/2, r)
  materials: Materials  # fields [n, 3 + K, ...]
  noise_seed: np.ndarray  # [n] uint32 seed of the sensor noise


@dataclasses.dataclass(frozen=True)
class _ViewArrays:
  """``Views`` as traced inside the jitted renderer."""

  room: jax.Array
  camera: jax.Array
  target: jax.Array
  fov: jax.Array
  light: jax.Array
  light_colour: jax.Array
  ambient: jax.Array
  noise_std: jax.Array
  present: jax.Array
  centre: jax.Array
  angle: jax.Array
  size: jax.Array
  materials: Materials
  noise_seed: jax.Array


def _unit(v):
  """Normalises the last axis; works on numpy and JAX arrays."""
  return v / (v * v).sum(axis=-1, keepdims=True) ** 0.5


# Material kinds: rows 0-2 of a scene's materials are floor, walls, ceiling; the rest objects.
_FLOOR_KIND, _WALL_KIND, _CEILING_KIND, _OBJECT_KIND = range(4)
_MATERIAL_KINDS = np.array([_FLOOR_KIND, _WALL_KIND, _CEILING_KIND] + [_OBJECT_KIND] * NUM_SLOTS)
# Per kind: probabilities of PLAIN, CHECKERS, STRIPES, BLOTCHES; pattern frequency range (1/m);
# largest specular weight.
_PATTERN_PROBABILITIES = np.array([[0.0, 0.5, 0.3, 0.2], [0.4, 0.0, 0.4, 0.2],
                                   [1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.3, 0.2]])
# Low enough for patterns to stay visible rather than alias into noise at 32x32.
_FREQUENCY_RANGE = np.array([[0.3, 0.8], [0.3, 1.0], [1.0, 1.0], [1.0, 3.0]])
_MAX_SPECULAR = np.array([0.1, 0.1, 0.1, 0.5])


def _sample_materials(rng: np.random.Generator) -> dict:
  """One material per row of ``_MATERIAL_KINDS``, with a handful of vectorised draws."""
  kinds = _MATERIAL_KINDS
  rows = len(kinds)
  colour_a = rng.uniform(0.1, 0.9, size=(rows, 3))
  # The second colour is darker, so that patterns show up as texture edges in the image.
  colour_b = np.clip(colour_a * rng.uniform(0.3, 0.7, size=(rows, 1))
                     + rng.uniform(-0.1, 0.1, size=(rows, 3)), 0, 1)
  cumulative = np.cumsum(_PATTERN_PROBABILITIES[kinds], axis=1)[:, :-1]
  pattern = (rng.uniform(size=(rows, 1)) >= cumulative).sum(axis=1)
  low, high = _FREQUENCY_RANGE[kinds].T
  return dict(
      colour_a=colour_a, colour_b=colour_b, pattern=pattern,
      frequency=low + (high - low) * rng.uniform(size=rows),
      axis=_unit(rng.normal(size=(rows, 3))), axis2=_unit(rng.normal(size=(rows, 3))),
      phase=rng.uniform(0, 2 * np.pi, size=(rows, 2)), shininess=rng.uniform(8, 64, size=rows),
      specular=_MAX_SPECULAR[kinds] * rng.uniform(size=rows))


def sample_views(scene_key: tuple[int, ...], views_per_scene: int) -> list[dict]:
  """Samples one scene from ``scene_key`` and ``views_per_scene`` cameras looking into it.

  Returns one dict of ``Views`` fields (without the leading axis) per view.
  """
  rng = np.random.default_rng(list(scene_key))
  room = np.array([rng.uniform(5, 9), rng.uniform(2.6, 3.6), rng.uniform(6, 10)])
  half_w, height, half_d = room[0] / 2, room[1], room[2] / 2
  present = np.zeros(NUM_SLOTS, bool)
  present[rng.choice(NUM_SLOTS, size=rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1), replace=False)] = True
  classes = np.array(SLOT_CLASSES)
  # Sizes: spheres (r, r, r), boxes half extents, cylinders and cones (r, h/2, r).
  u = rng.uniform(size=(NUM_SLOTS, 3))
  sphere = np.repeat(0.2 + 0.35 * u[:, :1], 3, axis=1)
  box = np.array([0.15, 0.15, 0.15]) + np.array([0.45, 0.55, 0.45]) * u
  radius = 0.15 + 0.3 * u[:, 0]
  round_ = np.stack([radius, 0.2 + 0.6 * u[:, 1], radius], axis=1)
  size = np.where((classes == SPHERE)[:, None], sphere, np.where((classes == BOX)[:, None], box, round_))
  # Objects stand on the floor around a cluster point in the far part of the room; cameras stay
  # in the near part, at least 0.4 m from any object.
  cluster = np.array([rng.uniform(-0.3, 0.3) * half_w, rng.uniform(-0.4, 0.1) * half_d])
  xz = cluster + rng.normal(0, [1.2, 1.0], size=(NUM_SLOTS, 2))
  xz = np.clip(xz, [-half_w + 0.8, -half_d + 0.8], [half_w - 0.8, half_d - 2.0])
  centre = np.stack([xz[:, 0], size[:, 1], xz[:, 1]], axis=1)
  angle = rng.uniform(0, np.pi, size=NUM_SLOTS)
  materials = _sample_materials(rng)
  light = np.array([rng.uniform(-0.7, 0.7) * half_w, height - rng.uniform(0.2, 0.6),
                    rng.uniform(-0.6, 0.6) * half_d])
  light_colour = rng.uniform(0.8, 1.0, size=3) * rng.uniform(0.9, 1.3)
  ambient = rng.uniform(0.15, 0.35)
  views = []
  for _ in range(views_per_scene):
    u = rng.uniform(size=8)
    camera = np.array([(1.2 * u[0] - 0.6) * half_w, 1.0 + u[1] * (min(2.0, height - 0.3) - 1.0),
                       half_d - 0.3 - 0.7 * u[2]])
    target = np.array([cluster[0] + 1.6 * u[3] - 0.8, 0.6 * u[4], cluster[1] + 1.6 * u[5] - 0.8])
    views.append(dict(
        room=room, camera=camera, target=target, fov=np.deg2rad(50 + 25 * u[6]), light=light,
        light_colour=light_colour, ambient=ambient, noise_std=0.02 + 0.06 * u[7],
        present=present, centre=centre, angle=angle, size=size, materials=materials,
        noise_seed=rng.integers(0, 2**32)))
  return views


def stack_views(views: list[dict]) -> Views:
  """Stacks per-view dicts from ``sample_views`` into one batched ``Views`` (float32)."""
  def stack(key, dtype=np.float32):
    return np.stack([v[key] for v in views]).astype(dtype)
  materials = Materials(**{
      key: np.stack([v["materials"][key] for v in views]).astype(
          np.int32 if key == "pattern" else np.float32)
      for key in views[0]["materials"]})
  return Views(
      room=stack("room"), camera=stack("camera"), target=stack("target"), fov=stack("fov"),
      light=stack("light"), light_colour=stack("light_colour"), ambient=stack("ambient"),
      noise_std=stack("noise_std"), present=stack("present", bool),
      centre=stack("centre"), angle=stack("angle"), size=stack("size"), materials=materials,
      noise_seed=stack("noise_seed", np.uint32))


# ---------------------------------------------------------------------------------------------
# Ray casting. Rays are arrays [n, 1 or K, P, 3]; objects broadcast as [n, K, 1, ...].


def _camera_rays(views: Views, height: int, width: int):
  """Returns camera frames ``[n, 3, 3]`` (rows right, up, back) and unit rays ``[n, P, 3]``."""
  forward = _unit(views.target - views.camera)
  right = _unit(jnp.cross(forward, jnp.array([0.0, 1.0, 0.0], jnp.float32)))
  up = jnp.cross(right, forward)
  tan_half = jnp.tan(views.fov / 2)[:, None]
  xs = ((jnp.arange(width, dtype=jnp.float32) + 0.5) / width * 2 - 1)
  ys = (1 - (jnp.arange(height, dtype=jnp.float32) + 0.5) / height * 2) * (height / width)
  grid_x = jnp.broadcast_to(xs[None, :], (height, width)).reshape(-1)
  grid_y = jnp.broadcast_to(ys[:, None], (height, width)).reshape(-1)
  directions = (forward[:, None, :] + (grid_x[None, :] * tan_half)[..., None] * right[:, None, :]
                + (grid_y[None, :] * tan_half)[..., None] * up[:, None, :])
  frame = jnp.stack([right, up, -forward], axis=1)
  return frame, _unit(directions).astype(jnp.float32)


def _to_local(points: jnp.ndarray, views: Views) -> jnp.ndarray:
  """World ``[n, *, P, 3]`` (broadcast against objects ``[n, K]``) -> object frames ``[n, K, P, 3]``."""
  cos = jnp.cos(views.angle)[:, :, None]
  sin = jnp.sin(views.angle)[:, :, None]
  x, y, z = points[..., 0], points[..., 1], points[..., 2]
  return jnp.stack([cos * x - sin * z, jnp.broadcast_to(y, jnp.broadcast_shapes(y.shape, cos.shape)),
                   sin * x + cos * z], axis=-1)


def _sphere_hits(o, d, size):
  """``|o + t d| = r`` with ``|d| = 1``; the nearer root."""
  r = size[..., 0]
  b = (o * d).sum(-1)
  c = (o * o).sum(-1) - r * r
  return -b - jnp.sqrt(b * b - c)


def _box_hits(o, d, size):
  """Slab test against the box ``|x_i| <= size_i``; the entry distance."""
  inv = 1.0 / jnp.where(jnp.abs(d) < 1e-9, 1e-9, d)
  t1 = (-size - o) * inv
  t2 = (size - o) * inv
  t_near = jnp.minimum(t1, t2).max(axis=-1)
  t_far = jnp.maximum(t1, t2).min(axis=-1)
  return jnp.where(t_near <= t_far, t_near, jnp.nan)


def _cylinder_hits(o, d, size):
  """Side ``x^2 + z^2 = r^2`` with ``|y| <= h``, and the top cap (the bottom one is on the floor)."""
  ox, oy, oz = o[..., 0], o[..., 1], o[..., 2]
  dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
  r, half_h = size[..., 0], size[..., 1]
  a = dx * dx + dz * dz
  b = ox * dx + oz * dz
  c = ox * ox + oz * oz - r * r
  t_side = (-b - jnp.sqrt(b * b - a * c)) / a
  t_side = jnp.where((jnp.abs(oy + t_side * dy) <= half_h) & (t_side > _EPS), t_side, jnp.nan)
  t_cap = (half_h - oy) / dy
  cap_x, cap_z = ox + t_cap * dx, oz + t_cap * dz
  t_cap = jnp.where((cap_x * cap_x + cap_z * cap_z <= r * r) & (t_cap > _EPS), t_cap, jnp.nan)
  return jnp.fmin(t_side, t_cap)


def _cone_hits(o, d, size):
  """Side ``x^2 + z^2 = k^2 (h - y)^2``: base radius r at ``y = -h``, apex at ``y = h``."""
  ox, oy, oz = o[..., 0], o[..., 1], o[..., 2]
  dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
  r, half_h = size[..., 0], size[..., 1]
  k2 = (r / (2 * half_h)) ** 2
  y0 = half_h - oy
  a = dx * dx + dz * dz - k2 * dy * dy
  b = ox * dx + oz * dz + k2 * y0 * dy
  c = ox * ox + oz * oz - k2 * y0 * y0
  root = jnp.sqrt(b * b - a * c)
  roots = []
  for t in ((-b - root) / a, (-b + root) / a):
    y = oy + t * dy
    roots.append(jnp.where((t > _EPS) & (y >= -half_h) & (y <= half_h), t, jnp.nan))
  return jnp.fmin(*roots)


_HIT_FUNCTIONS = {SPHERE: _sphere_hits, BOX: _box_hits, CYLINDER: _cylinder_hits, CONE: _cone_hits}


def _object_hits(origin: jax.Array, direction: jax.Array, views) -> jax.Array:
  """Nearest positive hit distance of every ray with every object slot, ``[n, K, P]`` (_FAR = miss).

  ``origin``/``direction``: world ``[n, 1 or P, 3]`` and ``[n, P, 3]``.
  """
  o = _to_local(origin[:, None] - views.centre[:, :, None, :], views)
  d = _to_local(direction[:, None], views)
  size = views.size[:, :, None, :]
  hits = []
  for start, cls in enumerate(SLOT_CLASSES):
    if start > 0 and SLOT_CLASSES[start - 1] == cls:
      continue
    stop = start + SLOT_CLASSES.count(cls)
    hits.append(_HIT_FUNCTIONS[cls](o[:, start:stop], d[:, start:stop], size[:, start:stop]))
  t = jnp.concatenate(hits, axis=1)
  return jnp.where((t > _EPS) & views.present[:, :, None], t, _FAR).astype(jnp.float32)


def _room_hits(origin: jnp.ndarray, direction: jnp.ndarray, views: Views):
  """Exit distance ``[n, P]`` and surface class ``[n, P]`` of rays starting inside the room."""
  half = views.room * jnp.array([0.5, 1.0, 0.5], jnp.float32)
  low = (-half * jnp.array([1, 0, 1], jnp.float32))[:, None, :]
  high = half[:, None, :]
  bound = jnp.where(direction > 0, high, low)
  t_axes = (bound - origin) / jnp.where(direction == 0, 1e-9, direction)
  axis = jnp.argmin(t_axes, axis=-1)
  t = jnp.take_along_axis(t_axes, axis[..., None], axis=-1)[..., 0]
  going_up = jnp.take_along_axis(direction, axis[..., None], axis=-1)[..., 0] > 0
  surface = jnp.where(axis != 1, WALL, jnp.where(going_up, CEILING, FLOOR))
  return t, surface, axis


def _texture(points: jnp.ndarray, materials: Materials, row: jnp.ndarray) -> jnp.ndarray:
  """Albedo ``[n, P, 3]`` of material rows ``row`` ``[n, P]`` at texture coordinates ``points``."""
  def gather(field):
    return jnp.take_along_axis(field, row.reshape(row.shape + (1,) * (field.ndim - 2)), axis=1)
  pattern = gather(materials.pattern)
  frequency = gather(materials.frequency)
  axis, axis2, phase = gather(materials.axis), gather(materials.axis2), gather(materials.phase)
  scaled = points * frequency[..., None]
  # The half-cell offset keeps cell borders off the floor plane y = 0, where rounding noise
  # would otherwise flip the cells pixel by pixel.
  checkers = jnp.floor(scaled + 0.5).sum(axis=-1) % 2
  stripes = (jnp.sin(2 * jnp.pi * (scaled * axis).sum(-1) + phase[..., 0]) > 0).astype(jnp.float32)
  blotches = jnp.clip(0.5 + 0.35 * (jnp.sin(4.0 * (scaled * axis).sum(-1) + phase[..., 0])
                                   + jnp.sin(3.0 * (scaled * axis2).sum(-1) + phase[..., 1])), 0, 1)
  mix = jnp.select([pattern == CHECKERS, pattern == STRIPES, pattern == BLOTCHES],
                  [checkers, stripes, blotches], 0.0)[..., None]
  return gather(materials.colour_a) * (1 - mix) + gather(materials.colour_b) * mix


# ---------------------------------------------------------------------------------------------
# 2D filters over image batches [n, h, w].


def _pad(x: jnp.ndarray) -> jnp.ndarray:
  return jnp.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")


def _blur3(x: jnp.ndarray) -> jnp.ndarray:
  """Separable [1, 2, 1] / 4 binomial blur with edge padding."""
  p = _pad(x)
  rows = (p[:, :, :-2] + 2 * p[:, :, 1:-1] + p[:, :, 2:]) / 4
  return (rows[:, :-2] + 2 * rows[:, 1:-1] + rows[:, 2:]) / 4


def _sobel(x: jnp.ndarray):
  p = _pad(x)
  gx = (p[:, :-2, 2:] + 2 * p[:, 1:-1, 2:] + p[:, 2:, 2:] - p[:, :-2, :-2] - 2 * p[:, 1:-1, :-2]
        - p[:, 2:, :-2]) / 8
  gy = (p[:, 2:, :-2] + 2 * p[:, 2:, 1:-1] + p[:, 2:, 2:] - p[:, :-2, :-2] - 2 * p[:, :-2, 1:-1]
        - p[:, :-2, 2:]) / 8
  return gx, gy


def texture_edges(gray: jnp.ndarray) -> jnp.ndarray:
  """Sobel gradient magnitude of a lightly blurred grey image, ``[n, h, w]``."""
  gx, gy = _sobel(_blur3(gray))
  return jnp.sqrt(gx * gx + gy * gy)


def corner_response(gray: jnp.ndarray) -> jnp.ndarray:
  """Square root of the Shi-Tomasi response (the structure tensor's smaller eigenvalue)."""
  gx, gy = _sobel(_blur3(gray))
  sxx, syy, sxy = _blur3(gx * gx), _blur3(gy * gy), _blur3(gx * gy)
  smaller = (sxx + syy) / 2 - jnp.sqrt(((sxx - syy) / 2) ** 2 + sxy * sxy)
  return jnp.sqrt(jnp.maximum(smaller, 0))


def geometry_edges(depth: jax.Array, normals: jax.Array) -> jax.Array:
  """Occlusion and crease edges in [0, 1] from depth ``[n, h, w]`` and normals ``[n, h, w, 3]``.

  Second differences vanish where a quantity changes linearly across the image and are large
  where it jumps. Inverse depth is affine in image coordinates on any plane, so its second
  difference marks where a surface ends (occlusion); normals turn steadily over a curved surface,
  so theirs marks creases (box edges, room corners, object-floor contacts) but not spheres.
  """
  def second_difference(x):  # [n, h, w, c] -> [n, h, w], the larger over both image axes
    # Odd reflection extrapolates linearly, so the border does not look like an edge.
    p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect", reflect_type="odd")
    across = p[:, 1:-1, :-2] + p[:, 1:-1, 2:] - 2 * x
    down = p[:, :-2, 1:-1] + p[:, 2:, 1:-1] - 2 * x
    return jnp.maximum(jnp.linalg.norm(across, axis=-1), jnp.linalg.norm(down, axis=-1))
  inverse = 1.0 / depth[..., None]
  occlusion = second_difference(inverse) / inverse[..., 0]
  crease = second_difference(normals)
  return jnp.maximum(jnp.clip(occlusion / 0.05, 0, 1), jnp.clip(crease / 0.5, 0, 1))


# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("height", "width", "shadows"))
def _render_labels(arrays: dict, height: int, width: int, shadows: bool) -> dict[str, jax.Array]:
  """The jitted body of ``render_views``."""
  views = _ViewArrays(**{k: v for k, v in arrays.items() if k != "materials"},
                      materials=Materials(**arrays["materials"]))
  n = views.camera.shape[0]
  frame, direction = _camera_rays(views, height, width)
  origin = views.camera[:, None, :]
  t_objects = _object_hits(origin, direction, views)  # [n, K, P]
  t_room, surface, room_axis = _room_hits(origin, direction, views)
  nearest = jnp.argmin(t_objects, axis=1)  # [n, P]
  t_object = jnp.take_along_axis(t_objects, nearest[:, None], axis=1)[:, 0]
  on_object = t_object < t_room
  t = jnp.where(on_object, t_object, t_room)
  point = origin + t[..., None] * direction  # [n, P, 3]

  # Per-pixel object parameters of the object hit (meaningless where on_object is False).
  def gather(field):
    index = nearest.reshape(nearest.shape + (1,) * (field.ndim - 2))
    return jnp.take_along_axis(field, index, axis=1)
  cls = gather(jnp.broadcast_to(jnp.array(SLOT_CLASSES), views.present.shape))
  centre, size, angle = gather(views.centre), gather(views.size), gather(views.angle)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  rel = point - centre
  local = jnp.stack([cos * rel[..., 0] - sin * rel[..., 2], rel[..., 1],
                    sin * rel[..., 0] + cos * rel[..., 2]], axis=-1)
  r, half_h = size[..., 0], size[..., 1]
  radial = jnp.sqrt(local[..., 0] ** 2 + local[..., 2] ** 2)
  # Object normals in object frames.
  sphere_n = local / size
  box_axis = jnp.argmax(jnp.abs(local / size), axis=-1)
  box_n = jnp.eye(3, dtype=jnp.float32)[box_axis] * jnp.sign(jnp.take_along_axis(
      local, box_axis[..., None], axis=-1))
  on_cap = jnp.abs(local[..., 1] - half_h) < jnp.abs(radial - r)
  side_n = jnp.stack([local[..., 0], jnp.zeros_like(radial), local[..., 2]], -1)
  cylinder_n = jnp.where(on_cap[..., None], jnp.array([0, 1, 0], jnp.float32), side_n)
  k2 = (r / (2 * half_h)) ** 2
  cone_n = jnp.stack([local[..., 0], k2 * (half_h - local[..., 1]), local[..., 2]], -1)
  local_n = jnp.select([(cls == c)[..., None] for c in (SPHERE, BOX, CYLINDER, CONE)],
                      [sphere_n, box_n, cylinder_n, cone_n], 1.0)
  local_n = _unit(local_n)
  object_n = jnp.stack([cos * local_n[..., 0] + sin * local_n[..., 2], local_n[..., 1],
                       -sin * local_n[..., 0] + cos * local_n[..., 2]], axis=-1)
  room_axis_sign = -jnp.sign(jnp.take_along_axis(direction, room_axis[..., None], axis=-1))
  room_n = jnp.eye(3, dtype=jnp.float32)[room_axis] * room_axis_sign
  normal = jnp.where(on_object[..., None], object_n, room_n).astype(jnp.float32)

  segment = jnp.where(on_object, cls, surface)
  cos_half_angle = 2 * half_h / jnp.sqrt(4 * half_h ** 2 + r ** 2)
  k_cylinder = jnp.where(on_cap, 0.0, 1.0 / r)
  k_cone = cos_half_angle / jnp.maximum(radial, 1 / _CURVATURE_CLIP)
  k1 = jnp.select([segment == SPHERE, segment == CYLINDER, segment == CONE],
                 [1.0 / r, k_cylinder, k_cone], 0.0)
  k2 = jnp.where(segment == SPHERE, 1.0 / r, 0.0)
  curvature = jnp.clip(jnp.stack([k1, k2], -1), 0, _CURVATURE_CLIP)

  # Appearance: solid textures in object frames (they move with the object), world frame for
  # the room.
  material_row = jnp.where(on_object, 3 + nearest, jnp.minimum(surface, 2)).astype(jnp.int32)
  texture_point = jnp.where(on_object[..., None], local, point)
  albedo = _texture(texture_point, views.materials, material_row)
  to_light = views.light[:, None, :] - point
  light_distance = jnp.linalg.norm(to_light, axis=-1)
  to_light = to_light / light_distance[..., None]
  diffuse = jnp.maximum((normal * to_light).sum(-1), 0)
  lit = jnp.ones_like(diffuse)
  if shadows:
    shadow_origin = point + normal * 1e-3
    blocked = _object_hits(shadow_origin, to_light, views).min(axis=1) < light_distance
    lit = jnp.where(blocked, 0.0, 1.0)
  half_vector = _unit(to_light - direction)
  row = material_row
  shininess = jnp.take_along_axis(views.materials.shininess, row, axis=1)
  specular_weight = jnp.take_along_axis(views.materials.specular, row, axis=1)
  specular = specular_weight * jnp.maximum((normal * half_vector).sum(-1), 0) ** shininess
  falloff = 1.0 / (1.0 + 0.05 * light_distance ** 2)
  light = views.light_colour[:, None, :]
  radiance = albedo * (views.ambient[:, None, None] + (lit * diffuse * falloff)[..., None] * light)
  radiance = radiance + (lit * specular * falloff)[..., None] * light
  clean = jnp.clip(radiance, 0, 1) ** (1 / 2.2)

  forward = -frame[:, 2]
  depth = t * (direction * forward[:, None, :]).sum(-1)
  camera_normal = jnp.einsum("npc,nrc->npr", normal, frame)
  reshading = jnp.maximum((normal * -direction).sum(-1), 0)

  def image(x, channels=None):
    shape = (n, height, width) + (() if channels is None else (channels,))
    return x.reshape(shape).astype(jnp.float32)
  gray = image(clean @ jnp.array([0.299, 0.587, 0.114], jnp.float32))
  # Sensor noise keyed per view, so a view's pixels do not depend on the batch it is in.
  noise = jax.vmap(lambda seed: jax.random.normal(jax.random.key(seed), (height, width, 3)))(views.noise_seed)
  to_uint8 = lambda x: jnp.round(x * 255).astype(jnp.uint8)
  depth_image = image(depth)
  normal_image = image(camera_normal, 3)
  return {
      "rgb": to_uint8(jnp.clip(image(clean, 3) + views.noise_std[:, None, None, None] * noise, 0, 1)),
      "clean_rgb": to_uint8(image(clean, 3)),
      "segment_semantic": image(segment).astype(jnp.uint8),
      "depth": depth_image[..., None],
      "normals": normal_image,
      "keypoints2d": corner_response(gray)[..., None],
      "edges2d": texture_edges(gray)[..., None],
      "edges3d": geometry_edges(depth_image, normal_image)[..., None],
      "reshading": image(reshading)[..., None],
      "curvature": image(curvature, 2),
  }


_CHUNK = 8  # views per jitted call: small enough for the [views, slots, pixels] arrays to stay in cache


def render_views(views: Views, height: int, width: int, shadows: bool = True) -> dict[str, np.ndarray]:
  """Renders ``n`` views on the CPU; returns the images and labels of the module docstring.

  ``rgb`` and ``clean_rgb`` are uint8 ``[n, h, w, 3]``, ``segment_semantic`` uint8 ``[n, h, w]``,
  the rest float32 ``[n, h, w, c]``. Chunks of views render in parallel threads, one per core
  this process may use (XLA releases the GIL while it runs).
  """
  n = views.camera.shape[0]
  arrays = {field.name: getattr(views, field.name) for field in dataclasses.fields(views)}
  arrays["materials"] = {field.name: getattr(views.materials, field.name)
                         for field in dataclasses.fields(views.materials)}
  # Pad to whole chunks (repeating the first view) so that one compiled shape serves every call.
  padded = -n % _CHUNK
  if padded:
    arrays = jax.tree.map(lambda x: np.concatenate([x, np.repeat(x[:1], padded, axis=0)]), arrays)
  chunk_of = lambda start: jax.tree.map(lambda x: x[start:start + _CHUNK], arrays)
  shapes = jax.eval_shape(functools.partial(_render_labels, height=height, width=width, shadows=shadows),
                          chunk_of(0))
  outputs = {k: np.empty((n,) + v.shape[1:], v.dtype) for k, v in shapes.items()}
  cpu = jax.devices("cpu")[0]

  def render_chunk(start):
    with jax.default_device(cpu):  # thread-local: entered in each worker
      chunk = _render_labels(chunk_of(start), height, width, shadows)
      for key, value in chunk.items():
        outputs[key][start:start + _CHUNK] = np.asarray(value)[:n - start]

  with concurrent.futures.ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
    list(pool.map(render_chunk, range(0, n, _CHUNK)))
  return outputs


def render_scenes(scene_keys: list[tuple[int, ...]], views_per_scene: int, image_size: int,
                  shadows: bool = True) -> dict[str, np.ndarray]:
  """Samples and renders ``len(scene_keys) * views_per_scene`` square views, scene-major."""
  views = [v for key in scene_keys for v in sample_views(key, views_per_scene)]
  return render_views(stack_views(views), image_size, image_size, shadows=shadows)
