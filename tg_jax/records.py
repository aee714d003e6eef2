"""The records that cross from training to selection and reporting; plain Python, no jax.

- ``Network``: who a network is (its tasks, size, training method and seed replica), named
  ``<tasks>[@size][:method][#seed]``. Every module names networks this way; a results table, which
  knows only tasks, measured cost and (with replicas) seed, maps its rows to names through the run's
  ``NetworkRecord``s (``names_of``).
- ``Schedule``: when a run validates, where it stops, which validation is the ESA table.
- ``NetworkRecord`` and ``RunRecord``: ``results/networks.json``, always with the schedule, so a
  reader can tell converged results from an early-stopped run's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Optional, Sequence

from tg_jax.selection import tables

SIZE_SEPARATOR = "@"
METHOD_SEPARATOR = ":"
SEED_SEPARATOR = "#"
EQUAL_WEIGHTS = ""  # the paper's training: the unweighted mean of the task losses
SOFT_SHARING = "soft"
# Model families a network can be trained as instead of the run's model (``<tasks>:mtan``): the
# ``tg_jax.models`` registry's names of the architectures built on the paper's encoder.
ARCHITECTURES = ("mtan", "cross_stitch", "mmoe")
# A transfer network's method: ``from_<source task>``, its target task's decoder trained on the frozen
# encoder of the source task's single-task network (Taskonomy's transfer), e.g. ``depth:from_normals``.
TRANSFER_PREFIX = "from_"
FULL_SIZE = 1.0


@dataclasses.dataclass(frozen=True, order=True)
class Network:
  """One network: the tasks it is trained on, its size in SNT, its training method and its seed.

  Attributes:
    tasks: task names, in the experiment's task order.
    size: intended inference cost in standard networks (1.0 full, 0.5 half) of its encoder; a
      ``soft`` network has one encoder per task, so its inference cost is ``len(tasks) * size``.
    method: ``""`` (equal task weights, the paper's), a ``tg_jax.balancing`` name, ``"soft"``, an
      architecture (``ARCHITECTURES``: the network is that model family, trained with equal weights), or
      ``from_<task>`` (a transfer network: see ``TRANSFER_PREFIX``).
    seed: which replica (``config.networks.seeds``): replicas of one network differ only in their
      initialisation and the order of their training batches. Seed 0, the default replica, is the
      network a one-seed experiment trains.
  """

  tasks: tuple[str, ...]
  size: float
  method: str = EQUAL_WEIGHTS
  seed: int = 0

  @property
  def name(self) -> str:
    """``depth+normals`` for size 1, ``depth@0.5`` otherwise, ``...:mgda`` with a method, ``...#2``
    for seed 2 (seed 0 has no suffix, so one-seed names are seed-free); unique within an experiment."""
    joined = tables.TASK_SEPARATOR.join(self.tasks)
    name = joined if self.size == FULL_SIZE else f"{joined}{SIZE_SEPARATOR}{self.size:g}"
    if self.method:
      name = f"{name}{METHOD_SEPARATOR}{self.method}"
    return f"{name}{SEED_SEPARATOR}{self.seed}" if self.seed else name

  @property
  def base(self) -> "Network":
    """The network without its seed: what every replica of it trains (seed 0's identity)."""
    return dataclasses.replace(self, seed=0)

  def replica(self, seed: int) -> "Network":
    """This network trained with ``seed``."""
    return dataclasses.replace(self, seed=int(seed))

  @property
  def encoders(self) -> int:
    """How many encoders inference runs: one per task for soft sharing, else one."""
    return len(self.tasks) if self.method == SOFT_SHARING else 1

  @property
  def transfer_source(self) -> str:
    """The task whose frozen encoder a transfer network (``<target>:from_<source>``) decodes; ""
    for every other network."""
    return transfer_source(self.method)


def transfer_source(method: str) -> str:
  """``"normals"`` from the method ``"from_normals"``; "" for any other method."""
  return method[len(TRANSFER_PREFIX):] if method.startswith(TRANSFER_PREFIX) else ""


def split_seed(name: str) -> tuple[str, int]:
  """``("depth+normals", 2)`` from ``"depth+normals#2"``; a name without ``#<seed>`` is seed 0."""
  base, separator, seed = name.rpartition(SEED_SEPARATOR)
  if not separator:
    return name, 0
  if not seed.isdigit():
    raise ValueError(f"network {name!r}: seed {seed!r} is not a non-negative integer; write e.g. "
                     f"'{base}{SEED_SEPARATOR}1', or no '{SEED_SEPARATOR}' for seed 0")
  return base, int(seed)


def name_of(tasks: Iterable[str], size: float, task_order: Sequence[str]) -> str:
  """The name of the equal-weight network of ``tasks`` (any order) and ``size``."""
  chosen = set(tasks)
  return Network(tuple(t for t in task_order if t in chosen), float(size)).name


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When things happen, in steps.

  Attributes:
    steps_per_epoch: steps between validations (``epoch_fraction`` of the training set).
    total_steps: the full schedule's length (``num_epochs`` epochs).
    stop_step: where this run stops (``stop_fraction`` of ``total_steps``).
    eval_steps: steps after which the networks are validated; the last is ``stop_step``.
    esa_step: the validation recorded as the early-stopping-approximation table.
  """

  steps_per_epoch: int
  total_steps: int
  stop_step: int
  eval_steps: tuple[int, ...]
  esa_step: int

  @classmethod
  def from_config(cls, config: Any, num_train_examples: int) -> "Schedule":
    steps_per_epoch = max(1, round(config.epoch_fraction * num_train_examples / config.batch_size))
    total_steps = config.num_epochs * steps_per_epoch
    stop_step = max(1, round(config.stop_fraction * total_steps))
    eval_steps = tuple(s for s in range(steps_per_epoch, stop_step, steps_per_epoch)) + (stop_step,)
    esa_step = next(s for s in eval_steps if s >= config.esa_fraction * total_steps or s == stop_step)
    return cls(steps_per_epoch, total_steps, stop_step, eval_steps, esa_step)

  @property
  def converged(self) -> bool:
    """Whether the run trains its whole schedule (an ESA-only run stops early)."""
    return self.stop_step >= self.total_steps

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, value: Mapping[str, Any]) -> "Schedule":
    return cls(int(value["steps_per_epoch"]), int(value["total_steps"]), int(value["stop_step"]),
               tuple(int(s) for s in value["eval_steps"]), int(value["esa_step"]))


TRAINED = "trained"
DIVERGED = "diverged"


@dataclasses.dataclass(frozen=True)
class NetworkRecord:
  """One network's entry in ``results/networks.json``.

  Attributes:
    name, tasks, size, method, seed: the ``Network`` (``seed``: its replica; 0 in records written
      before replicas existed).
    cost: measured inference cost in SNT (a soft-sharing network counts one encoder per task).
    status: ``"trained"`` or ``"diverged"`` (then ``diverged_step`` says when).
    best_step: the step of the network's reported checkpoint: its lowest mean validation loss.
    val, test: per task, the validation and test loss of that one checkpoint (the tables' values).
    val_peak, val_peak_step: per task, the lowest validation loss over all validations and its step
      (tasks peak at different times); a diagnosis, not something one parameter set achieves.
    esa: per task, the validation loss at the ESA step.
    improvement_over_constant: ``{"val"|"test": {task: 1 - loss / constant predictor's loss}}``.
  """

  name: str
  tasks: tuple[str, ...]
  size: float
  method: str
  cost: float
  status: str
  best_step: int
  val: dict[str, float]
  test: dict[str, float]
  esa: dict[str, float]
  val_peak: dict[str, float]
  val_peak_step: dict[str, int]
  improvement_over_constant: dict[str, dict[str, float]]
  diverged_step: Optional[int] = None
  seed: int = 0

  @property
  def network(self) -> Network:
    return Network(self.tasks, self.size, self.method, self.seed)

  @property
  def key(self) -> tuple[frozenset, float]:
    """The identity of its row in a results table (``tables.network_key``)."""
    return tables.network_key(self.tasks, self.cost)

  def to_json(self) -> dict[str, Any]:
    value = dataclasses.asdict(self)
    value["tasks"] = list(self.tasks)
    return value

  @classmethod
  def from_json(cls, value: Mapping[str, Any]) -> "NetworkRecord":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - fields)
    if unknown:
      raise ValueError(f"network record {value.get('name')!r} has unknown keys {unknown}")
    entry = dict(value)
    entry["tasks"] = tuple(entry["tasks"])
    return cls(**entry)


@dataclasses.dataclass(frozen=True)
class RunRecord:
  """``results/networks.json``: every network of a run (or of merged shards), with the schedule.

  Attributes:
    networks: per network, in the experiment's network order.
    constant_predictor: ``{"validation"|"test": {task: loss}}`` of predicting the training mean.
    schedule: the run's schedule; it says whether the tables hold converged losses.
    shards: the array-job shards merged into this record, if any.
  """

  networks: tuple[NetworkRecord, ...]
  constant_predictor: dict[str, dict[str, float]]
  schedule: Schedule
  shards: tuple[str, ...] = ()

  def to_json(self) -> dict[str, Any]:
    value = {"networks": [n.to_json() for n in self.networks], "constant_predictor": self.constant_predictor,
             "schedule": self.schedule.to_json()}
    if self.shards:
      value["shards"] = list(self.shards)
    return value

  @classmethod
  def from_json(cls, value: Mapping[str, Any], source: str = "networks.json") -> "RunRecord":
    if "schedule" not in value:
      raise ValueError(f"{source} has no 'schedule': without it converged and early-stopped results cannot be told "
                       f"apart. It was written by an older tg_jax; rerun python -m tg_jax.merge (shards) or the "
                       f"training command on the workdir to rewrite it")
    return cls(tuple(NetworkRecord.from_json(n) for n in value["networks"]), dict(value["constant_predictor"]),
               Schedule.from_json(value["schedule"]), tuple(value.get("shards", ())))


def names_of(runs: Sequence[RunRecord], keys: Iterable[tuple[Sequence[str], float]],
             task_order: Sequence[str]) -> list[str]:
  """Names of ``(tasks, cost)`` table rows, looked up in the first of ``runs`` that has them.

  A network with seed replicas is named by its replica of the lowest seed (seed 0 unless the
  experiment lists other seeds), so the names of one call are all of one seed: what an ensemble of
  them needs. ``split_seed`` gives the network behind a replica's name.
  """
  by_key = {}
  for run in reversed(runs):  # the first run's lowest seed is assigned last, so it wins
    for r in sorted((r for r in run.networks if not r.method), key=lambda r: r.seed, reverse=True):
      by_key[r.key] = r.name
  return [by_key.get(tables.network_key(tasks, cost)) or name_of(tasks, cost, task_order) for tasks, cost in keys]
