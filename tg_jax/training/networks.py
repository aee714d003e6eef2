"""The list of networks an experiment trains, and how they are grouped for training.

A network is a task subset, a size (its encoder's cost in standard networks, SNT) and a training
method: ``""``, the paper's equal task weights, or a balancing method of ``tg_jax.balancing``
(``mgda``, ``uncertainty``, ``pcgrad``, ...), or ``soft`` (soft parameter sharing: one network per
task, their encoders pulled together by an L2 penalty), or an architecture (``mtan``, ``cross_stitch``,
``mmoe``: that model family on the run's encoder, equal task weights), or ``from_<task>``: a transfer
network, one target task's decoder trained on the frozen encoder of ``<task>``'s single-task network
(Taskonomy's transfer). Names read ``<tasks>[@size][:method][#seed]``, e.g. ``depth+normals@0.5``,
``depth+normals+edges2d:mgda``, ``depth:from_normals`` or ``depth+normals#1``. An experiment names
its networks with a few switches (``config.networks``): every single task, every pair, every subset,
half-size single-task networks, or an explicit list.

Seed replicas (``config.networks.seeds``: a count, or a list of seeds): every listed network is
trained once per seed, as networks of the same run. Replica ``s`` of a network differs from replica
0 in its initialisation (``cohorts.network_rng``: the seed folded into the network's key) and in its
training batches (``trainer``: one batch stream per seed); replica 0 is bitwise the network a one-seed
run trains. Its name carries ``#<s>`` (seed 0 none), so one-seed names are as they always were.

Equal-weight networks of one size and seed form a *cohort*: one model is built over the cohort's
task union and its networks are stacked on a leading axis and trained by one vmapped step on their
seed's batch, each network masked to its own tasks (see ``trainer``). A network with a method is a
cohort of its own (same size, method, tasks and seed): balancers assume every task they see is
trained, so such a cohort's model carries exactly the network's tasks and nothing is masked. A
cohort too large for device memory is split into *chunks* of at most ``chunk_size`` networks.
Model families without one shared encoder (MTAN, cross-stitch, MMoE: ``models.shares_one_encoder``)
give every task set a cohort of its own: their widths depend on the number of tasks, and a
cross-stitch column would feed the other tasks of a union model.

A network's identity (``records.Network``) is jax-free, shared with selection and reporting; this
module adds what needs the method registry: parsing a name with its method checked. Everything
here is plain Python: the list is fixed by the config, so a resumed run, a shard of an
array job and the merge of the shards all agree on which network is which.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Iterable, Sequence

import ml_collections

from tg_jax import balancing
from tg_jax.records import (ARCHITECTURES, EQUAL_WEIGHTS, METHOD_SEPARATOR, SIZE_SEPARATOR, SOFT_SHARING,
                            TRANSFER_PREFIX, Network, split_seed, transfer_source)
from tg_jax.selection import tables

SUBSET_CHOICES = ("singles", "pairs", "all")
# The method of a cohort of transfer networks (``<target>:from_<source>``): their decoders train on
# frozen encoders loaded from the source tasks' single-task networks (``trainer``).
TRANSFER = "transfer"


def methods() -> list[str]:
  """Every method a network name may carry after ``:``: balancing methods, soft sharing, architectures."""
  return balancing.names() + [SOFT_SHARING] + list(ARCHITECTURES)


def parse(name: str, known_tasks: Sequence[str]) -> Network:
  """The inverse of ``Network.name``: ``"depth+normals"``, ``"depth@0.5"``, ``"depth+normals:mgda"``,
  ``"depth+normals#1"`` (seed 1's replica).

  Tasks are put in the order of ``known_tasks`` so one subset has one name.
  """
  base, seed = split_seed(name)
  name_and_size, _, method = base.partition(METHOD_SEPARATOR)
  source = transfer_source(method)
  if (method not in (EQUAL_WEIGHTS, *methods()) and not source) or (METHOD_SEPARATOR in base and not method):
    raise ValueError(f"network {name!r}: unknown method {method!r}; write <tasks>[@size][:method][#seed] with "
                     f"method one of {', '.join(methods())}, {TRANSFER_PREFIX}<task> (a transfer network) or no "
                     f"':method' for the paper's equal weights")
  subset, _, size_text = name_and_size.partition(SIZE_SEPARATOR)
  try:
    size = float(size_text) if size_text else 1.0
  except ValueError:
    raise ValueError(f"network {name!r}: size {size_text!r} is not a number; write e.g. 'depth@0.5'") from None
  if size <= 0:
    raise ValueError(f"network {name!r}: size must be > 0, got {size:g}")
  names = [t for t in subset.split(tables.TASK_SEPARATOR) if t]
  unknown = [t for t in names if t not in known_tasks]
  if unknown or not names:
    raise ValueError(f"network {name!r} names task(s) {unknown or '(none)'} that the experiment does not "
                     f"train; config.tasks: {', '.join(known_tasks)}")
  if len(set(names)) != len(names):
    raise ValueError(f"network {name!r} names a task twice")
  if source:
    if source not in known_tasks:
      raise ValueError(f"network {name!r}: transfer source {source!r} is not a task of the experiment; "
                       f"config.tasks: {', '.join(known_tasks)}")
    if len(names) != 1 or names[0] == source:
      raise ValueError(f"network {name!r}: a transfer network decodes one target task other than its source "
                       f"{source!r}, e.g. '{next((t for t in known_tasks if t != source), 'depth')}:"
                       f"{TRANSFER_PREFIX}{source}'")
  elif method and len(names) < 2:
    raise ValueError(f"network {name!r}: method {method!r} balances or shares between tasks and needs at "
                     f"least two; drop ':{method}' for a single-task network")
  return Network(tuple(t for t in known_tasks if t in names), size, method, seed)


def subsets(tasks: Sequence[str], which: str) -> list[tuple[str, ...]]:
  """Task subsets in a fixed order: singles, then pairs, then larger subsets.

  Args:
    tasks: the experiment's tasks, in order.
    which: ``"singles"``; ``"pairs"`` (singles and pairs, what HOA needs); ``"all"`` (all 2^k - 1).
  """
  if which not in SUBSET_CHOICES:
    raise ValueError(f"unknown config.networks.subsets {which!r}; choose one of {', '.join(SUBSET_CHOICES)}")
  largest = {"singles": 1, "pairs": 2, "all": len(tasks)}[which]
  return [combo for k in range(1, largest + 1) for combo in itertools.combinations(tasks, k)]


def seeds(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The replica seeds ``config.networks.seeds`` names: a count ``n`` is ``0, ..., n - 1``; a list is
  itself. ``(0,)`` for configs without the key (written before replicas existed)."""
  value = config.networks.get("seeds", 1)
  if isinstance(value, int) and not isinstance(value, bool):
    return tuple(range(value))
  return tuple(int(s) for s in value)


def from_config(config: ml_collections.ConfigDict) -> list[Network]:
  """The experiment's networks, in a fixed order (the order of networks.json and of checkpoints).

  Reads ``config.tasks`` and ``config.networks``: ``subsets`` (see ``subsets``; ``""`` for none),
  ``size`` (of those networks), ``half_size_singles`` (add one size-``half_size`` network per task),
  ``extra`` (explicit names such as ``"depth+normals@0.8"`` or ``"depth+normals:pcgrad"``),
  ``all_task_sizes`` (every all-task network listed so far, equal weights and each method's, again at
  each of these sizes: ``_wider_all_task_networks``), ``seeds``
  (``seeds``): the list of those networks once per seed, seed after seed, so with one seed (the
  default, 0) it is the list itself.
  """
  tasks = tuple(config.tasks)
  if not tasks:
    raise ValueError("config.tasks is empty; name the tasks to train, e.g. ('depth', 'normals')")
  if len(set(tasks)) != len(tasks):
    raise ValueError(f"config.tasks names a task twice: {tasks}")
  spec = config.networks
  networks = []
  if spec.subsets:
    networks += [Network(subset, float(spec.size)) for subset in subsets(tasks, spec.subsets)]
  if spec.half_size_singles:
    networks += [Network((task,), float(spec.half_size)) for task in tasks]
  networks += [parse(name, tasks) for name in spec.extra]
  networks += _wider_all_task_networks(networks, tasks, spec.get("all_task_sizes", ()))
  seeded = [n.name for n in networks if n.seed]
  if seeded:
    raise ValueError(f"config.networks.extra names seed replicas ({', '.join(seeded)}); list networks without "
                     f"'#<seed>' and set config.networks.seeds: every network is trained once per seed")
  names = [n.name for n in networks]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"networks listed twice: {', '.join(duplicates)}; remove them from config.networks.extra")
  if not networks:
    raise ValueError("config.networks selects no network; set networks.subsets to one of "
                     f"{', '.join(SUBSET_CHOICES)} or list networks in networks.extra")
  return [network.replica(seed) for seed in seeds(config) for network in networks]


def _wider_all_task_networks(networks: Sequence[Network], tasks: tuple[str, ...],
                             sizes: Sequence[float]) -> list[Network]:
  """``config.networks.all_task_sizes``: each all-task network of ``networks`` (one per method) again
  at every size of ``sizes``, so the all-task baselines have a network of their own at larger budgets."""
  sizes = [float(size) for size in sizes]
  bad = [size for size in sizes if not size > 0]
  if bad:
    raise ValueError(f"config.networks.all_task_sizes must be sizes > 0 in standard networks, e.g. (1.5, 2, 3); "
                     f"got {tuple(sizes)}")
  methods_trained = list(dict.fromkeys(n.method for n in networks if n.tasks == tasks))
  if sizes and not methods_trained:
    raise ValueError(f"config.networks.all_task_sizes widens the all-task network ({'+'.join(tasks)}), but the list "
                     f"has none; set networks.subsets = 'all' or list it in networks.extra")
  return [Network(tasks, size, method) for size in sizes for method in methods_trained]


def positions(networks: Sequence[Network]) -> dict[Network, int]:
  """Each network's position in the experiment's one-seed list (``from_config``'s list with every
  replica of a network at the position of its first replica): what its initialisation folds in."""
  base: dict[Network, int] = {}
  for network in networks:
    base.setdefault(network.base, len(base))
  return {network: base[network.base] for network in networks}


def shard(networks: Sequence[Network], shard_index: int, num_shards: int) -> list[Network]:
  """The networks of one slice of an array job: every ``num_shards``-th, from ``shard_index``.

  Striding (rather than contiguous blocks) spreads large and small networks over the slices.
  """
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index must be in [0, num_shards) and num_shards >= 1; got "
                     f"shard_index={shard_index}, num_shards={num_shards}")
  if num_shards > len(networks):
    raise ValueError(f"num_shards={num_shards} is more than the {len(networks)} networks; use at most "
                     f"{len(networks)} shards")
  return list(networks[shard_index::num_shards])


@dataclasses.dataclass(frozen=True)
class Cohort:
  """Networks of one size, method and seed, trained together by one vmapped step on one batch.

  Attributes:
    size: the networks' size (SNT).
    tasks: the union of the networks' tasks, in experiment order: the model's decoders.
    networks: the networks, in list order.
    method: the networks' method (``Network.method``); with a method, ``tasks`` are every network's;
      ``TRANSFER`` for transfer networks (``<target>:from_<source>``), masked like equal weights.
    seed: the networks' replica seed (``Network.seed``): which batch stream they train on.
    separate: the cohort's model is its one task set's (``cohorts(..., separate_task_sets=True)``).
  """

  size: float
  tasks: tuple[str, ...]
  networks: tuple[Network, ...]
  method: str = EQUAL_WEIGHTS
  seed: int = 0
  separate: bool = False

  @property
  def name(self) -> str:
    """``size_1`` for equal weights; ``size_1_mgda_depth-normals`` with a method; ``size_1_depth-normals``
    for one task set's own model (``cohorts(..., separate_task_sets=True)``); ``..._seed2`` for seed 2's
    replicas (checkpoint keys)."""
    name = f"size_{self.size:g}"
    if self.method:
      name = f"{name}_{self.method}_{'-'.join(self.tasks)}"
    elif self.separate:
      name = f"{name}_{'-'.join(self.tasks)}"
    return f"{name}_seed{self.seed}" if self.seed else name

  def task_mask(self) -> list[list[bool]]:
    """``[networks, tasks]``: whether each network trains each of the cohort's tasks."""
    return [[task in network.tasks for task in self.tasks] for network in self.networks]

  def chunks(self, chunk_size: int) -> list["Cohort"]:
    """Consecutive pieces of at most ``chunk_size`` networks (each keeps the cohort's decoders)."""
    if chunk_size < 1:
      raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [dataclasses.replace(self, networks=self.networks[i:i + chunk_size])
            for i in range(0, len(self.networks), chunk_size)]


def cohorts(networks: Iterable[Network], task_order: Sequence[str],
            separate_task_sets: bool = False) -> list[Cohort]:
  """Equal-weight networks grouped by seed (in list order) and size (largest first), and with
  ``separate_task_sets`` (``not models.shares_one_encoder(config.model)``) by task set (in list
  order); transfer networks likewise (cohorts of method ``TRANSFER``); then one cohort per network
  with a method.

  A method network's balancer (or soft-sharing penalty) sees every task of its cohort as trained,
  so it never shares a model with networks of other tasks.
  """
  Groups = dict[int, dict[float, dict[tuple[str, ...], list[Network]]]]
  by_seed: Groups = {}
  transfer: Groups = {}
  with_method = []
  for network in networks:
    if network.method and not network.transfer_source:
      with_method.append(network)
      continue
    task_set = network.tasks if separate_task_sets else ()
    groups = transfer if network.transfer_source else by_seed
    groups.setdefault(network.seed, {}).setdefault(network.size, {}).setdefault(task_set, []).append(network)

  def grouped(groups: Groups, method: str) -> list[Cohort]:
    result = []
    for seed, by_size in groups.items():
      for size in sorted(by_size, reverse=True):
        for members in by_size[size].values():
          union = {t for n in members for t in n.tasks}
          result.append(Cohort(size, tuple(t for t in task_order if t in union), tuple(members), method, seed,
                               separate=separate_task_sets))
    return result

  # Transfer networks train like equal-weight ones (each its own target task, masked), with frozen
  # encoders: one cohort per size and seed, so they compile once.
  return (grouped(by_seed, EQUAL_WEIGHTS) + grouped(transfer, TRANSFER)
          + [Cohort(n.size, n.tasks, (n,), n.method, n.seed) for n in with_method])
