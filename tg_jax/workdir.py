"""The layout of a workdir: every file a run writes or reads, who writes it, and how it is read back.

Plain Python and numpy (no jax), so the selection and reporting side reads workdirs on a laptop.

``results/examples_<split>.npz`` (``Workdir.examples``, ``Examples``) keeps, for the validation and test
tables, every example's loss under each row's reported checkpoint, so intervals over examples need no
re-evaluation: ``losses`` ``[rows, examples, tasks]`` float32 (NaN where the row's network does not
solve the task), ``tasks`` (the CSV's task columns) and ``networks`` (each row's network name, rows in
the CSV's order). Each row's mean over examples is its CSV loss up to float32 summation order.

```
WORKDIR/config.json                the run's config; a resume with a different config is refused
WORKDIR/lock                       who is running in this workdir (``locked``); empty when no one is       (main, merge)
WORKDIR/checkpoints/<step>/        orbax: every cohort's state, the step and the network names  (trainer)
WORKDIR/checkpoints_damaged/<step>/ checkpoints found damaged at resume, set aside              (trainer)
WORKDIR/results/val.csv            per network, the validation losses of its reported checkpoint  (trainer, merge)
                                   (one row per seed replica, with a seed column, when networks.seeds > 1)
WORKDIR/results/test.csv           test losses of the same checkpoint                             (trainer, merge)
WORKDIR/results/esa.csv            validation losses at the early-stopping step                    (trainer, merge)
WORKDIR/results/examples_val.npz   per-example losses behind val.csv (``Examples``)                (trainer, merge)
WORKDIR/results/examples_test.npz  per-example losses behind test.csv                             (trainer, merge)
WORKDIR/results/networks.json      records.RunRecord: every network's record and the schedule     (trainer, merge)
WORKDIR/results/methods.json       networks trained with a balancing method or soft sharing        (trainer, merge)
WORKDIR/results/tag.json           TAG's averaged lookahead affinities                             (trainer, merge)
WORKDIR/log.jsonl                  one JSON event a line                                           (trainer)
WORKDIR/tensorboard/               scalars per network and task                                    (trainer)
WORKDIR/selection.json             the selection per budget and the baselines                      (finish)
WORKDIR/ensemble.json              ensembling gains of the chosen networks                         (finish)
WORKDIR/predictions.npz            Figure 6: each method's chosen networks' test predictions       (finish)
WORKDIR/report.md, figures/        the study report                                                (finish, report)
WORKDIR/study.json                 Table 4's numbers, Figure 2's                                   (finish, report)
WORKDIR/retrain/                   the retraining phase: a workdir of its own                      (finish)
WORKDIR/refine/round_<k>/          ESA refinement round k's training (selection.refine): a workdir  (finish)
WORKDIR/adaptive/<k>_{early,full}/  the adaptive loop's k-th training (selection.adaptive): a workdir (finish)
WORKDIR/adaptive.json              the adaptive loop's rounds, compute and selection               (finish)
WORKDIR/transfer/                  the transfer phase (transfer.enabled): a workdir; its methods.json (finish)
                                   holds every <target>:from_<source> network's losses
WORKDIR/shards/shard_<i>_of_<n>/   an array job's slices, each a workdir of its own                (main)
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import glob
import io
import json
import os
import socket
import sys
import tempfile
import zipfile
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from tg_jax import records
from tg_jax.selection import tables, uncertainty

SPLITS = ("val", "test", "esa")  # the results tables, results/<split>.csv
EXAMPLE_SPLITS = ("val", "test")  # the tables with per-example losses, results/examples_<split>.npz


class WorkdirError(ValueError):
  """A workdir file is missing, unreadable or inconsistent; the message names the file and the fix."""


class WorkdirBusyError(WorkdirError):
  """Another process is running in the workdir (``locked``)."""


def write_atomic(path: str, content: Union[str, bytes]) -> None:
  """Writes ``content`` to ``path`` so that a reader (or a kill mid-write) sees the old file or the new one.

  The temporary file has a name of its own (``tempfile``) beside ``path``, so concurrent writers never
  write into each other's temporary file.
  """
  directory = os.path.dirname(path) or "."
  try:
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  except OSError as error:
    raise WorkdirError(_write_problem(path, error)) from None
  try:
    with os.fdopen(handle, "wb" if isinstance(content, bytes) else "w",
                   **({} if isinstance(content, bytes) else {"encoding": "utf-8"})) as f:
      f.write(content)
    os.replace(temporary, path)
  except OSError as error:
    with contextlib.suppress(OSError):
      os.unlink(temporary)
    raise WorkdirError(_write_problem(path, error)) from None


def _write_problem(path: str, error: OSError) -> str:
  if os.path.isdir(path):
    return f"cannot write {path}: it is a directory; remove it or name a file"
  return f"cannot write {path} ({error.strerror or error}); make its directory writable or choose another path"


def write_json(path: str, value: Any) -> None:
  """Atomic write (``write_atomic``)."""
  write_atomic(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def read_json(path: str) -> Optional[Any]:
  """The JSON in ``path``; None if there is no such file."""
  if not os.path.exists(path):
    return None
  if os.path.isdir(path):
    raise WorkdirError(f"{path} is a directory where a JSON file belongs; move it away and rerun")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise WorkdirError(f"{path} is not valid JSON ({error}); it was damaged or written by something else: restore "
                       f"it, or delete it and rerun the command that writes it") from None
  except OSError as error:
    raise WorkdirError(f"cannot read {path} ({error.strerror or error}); make it readable") from None


# Locks this process holds: the lock file's real path -> [its descriptor, how many ``locked`` hold it].
_HELD: dict[str, list[int]] = {}


def _holder(handle: int) -> str:
  """Who wrote the lock file open at ``handle``; "" for an empty (released) one."""
  os.lseek(handle, 0, os.SEEK_SET)
  text = os.read(handle, 4096).decode("utf-8", "replace").strip()
  if not text:
    return ""
  try:
    holder = json.loads(text)
    return (f"process {holder['pid']} on {holder['host']} (started {holder['started']}: "
            f"{holder['command']})")
  except (ValueError, KeyError, TypeError):
    return repr(text[:200])


@contextlib.contextmanager
def locked(workdir: "Workdir", enabled: bool = True) -> Iterator[None]:
  """Holds ``WORKDIR/lock`` while the block runs, so two runs never train or write in one workdir.

  The lock is an ``flock`` on the file, which the kernel releases when its process ends however it
  ends: a lock file left by a killed run is free and is taken over (with a warning naming that run).
  The file names its holder for the error another run gets. The same process may nest ``locked`` on
  one workdir (``main`` around the trainer and ``finish``). ``enabled`` False (processes other than
  the writer of a multi-host run) does nothing.

  Raises:
    WorkdirBusyError: another live process holds the lock; the message names it.
    WorkdirError: the workdir is a file or cannot be written.
  """
  if not enabled:
    yield
    return
  if os.path.exists(workdir.path) and not os.path.isdir(workdir.path):
    raise WorkdirError(f"workdir {workdir.path} is a file, not a directory; pass a directory as --workdir")
  cannot_write = lambda error: WorkdirError(
      f"cannot write in workdir {workdir.path} ({error.strerror or error}); a run writes its checkpoints and "
      f"results there: make it writable or pass another --workdir")
  try:
    os.makedirs(workdir.path, exist_ok=True)
    if not os.access(workdir.path, os.W_OK):
      raise PermissionError(errno.EACCES, "read-only")
  except OSError as error:
    raise cannot_write(error) from None
  path = os.path.realpath(workdir.lock)
  if path in _HELD:
    _HELD[path][1] += 1
    try:
      yield
    finally:
      _HELD[path][1] -= 1
    return
  try:
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as error:
    raise cannot_write(error) from None
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    holder = _holder(handle) or "another process"
    os.close(handle)
    raise WorkdirBusyError(f"workdir {workdir.path} is in use by {holder}; wait for that run to end (or stop it), "
                           f"or pass another --workdir") from None
  stale = _holder(handle)
  if stale:
    print(f"taking over {path}: its holder, {stale}, no longer runs", file=sys.stderr, flush=True)
  me = {"pid": os.getpid(), "host": socket.gethostname(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv)[:300]}
  os.ftruncate(handle, 0)
  os.pwrite(handle, json.dumps(me).encode("utf-8"), 0)
  _HELD[path] = [handle, 1]
  try:
    yield
  finally:
    del _HELD[path]
    # Emptied, never deleted: deleting would let a run that opened the old file and one that creates a
    # new one both hold "the" lock.
    os.ftruncate(handle, 0)
    os.close(handle)


# How a damaged results file comes back: the trainer rewrites it (from networks.json, or by evaluating
# its last checkpoint), merge from the shards.
_REWRITE = ("move it away and rerun the command that wrote it (python -m tg_jax.main rewrites it from the "
            "workdir's records and checkpoint, python -m tg_jax.merge from the shards)")


def _reason(error: Exception) -> str:
  if isinstance(error, IsADirectoryError):
    return "it is a directory"
  return f"{type(error).__name__}: {getattr(error, 'strerror', None) or error}"


@dataclasses.dataclass(frozen=True, eq=False)
class Examples:
  """Per-example losses of a results table's rows (``results/examples_<split>.npz``).

  Attributes:
    losses: ``[rows, examples, tasks]`` float32, each example's loss under the row's reported
      checkpoint; NaN where the row's network does not solve the task.
    tasks: the task columns, as the table's.
    networks: each row's network name (``records.Network.name``), in the table's row order.
  """

  losses: np.ndarray
  tasks: tuple[str, ...]
  networks: tuple[str, ...]

  def __post_init__(self):
    object.__setattr__(self, "losses", np.asarray(self.losses, np.float32))
    object.__setattr__(self, "tasks", tuple(str(t) for t in self.tasks))
    object.__setattr__(self, "networks", tuple(str(n) for n in self.networks))
    if self.losses.ndim != 3 or self.losses.shape[0] != len(self.networks) or self.losses.shape[2] != len(self.tasks):
      raise ValueError(f"per-example losses of shape {self.losses.shape} do not fit {len(self.networks)} rows and "
                       f"{len(self.tasks)} tasks; expected [rows, examples, tasks]")

  @classmethod
  def from_networks(cls, networks: Sequence[str], tasks: Sequence[str],
                    losses: dict[str, dict[str, np.ndarray]]) -> "Examples":
    """Rows ``networks`` over columns ``tasks`` from ``{name: {task: [examples] losses}}`` (a
    network's own tasks only; NaN elsewhere)."""
    count = len(next(iter(next(iter(losses.values())).values()))) if losses else 0
    array = np.full((len(networks), count, len(tasks)), np.nan, np.float32)
    for row, name in enumerate(networks):
      for column, task in enumerate(tasks):
        if task in losses[name]:
          array[row, :, column] = losses[name][task]
    return cls(array, tuple(tasks), tuple(networks))

  def by_network(self) -> dict[str, dict[str, np.ndarray]]:
    """The inverse of ``from_networks``: ``{name: {task: [examples]}}`` over the solved tasks."""
    return {name: {task: self.losses[row, :, column] for column, task in enumerate(self.tasks)
                   if not np.isnan(self.losses[row, :, column]).all()}
            for row, name in enumerate(self.networks)}


@dataclasses.dataclass(frozen=True, eq=False)
class Predictions:
  """Figure 6's data (``predictions.npz``): a few test images, their labels, and what each method's
  networks chosen at one budget predict for each task.

  Attributes:
    budget: the budget (SNT) whose choices made the predictions.
    images: ``[examples, h, w, 3]`` the input images in [0, 1].
    tasks, kinds: the tasks and their kinds (``tg_jax.tasks``' ``dense_regression``, ``segmentation``,
      ``classification``).
    truth: per task, the labels: dense ``[examples, h, w, channels]`` (normalised as trained),
      segmentation ``[examples, h, w]`` and classification ``[examples]`` class ids.
    methods: the methods (columns of the figure).
    networks: ``[methods, tasks]`` the name of the network serving each task ("" where none).
    outputs: per task, ``[methods, ...]`` each method's prediction in the layout of ``truth``
      (class ids for segmentation and classification).
  """

  budget: float
  images: np.ndarray
  tasks: tuple[str, ...]
  kinds: tuple[str, ...]
  truth: tuple[np.ndarray, ...]
  methods: tuple[str, ...]
  networks: np.ndarray
  outputs: tuple[np.ndarray, ...]

  def __post_init__(self):
    if not len(self.tasks) == len(self.kinds) == len(self.truth) == len(self.outputs):
      raise ValueError(f"predictions need one kind, label and output per task; got {len(self.tasks)} tasks, "
                       f"{len(self.kinds)} kinds, {len(self.truth)} labels, {len(self.outputs)} outputs")
    object.__setattr__(self, "networks", np.asarray(self.networks, str).reshape(len(self.methods), len(self.tasks)))

  def serving(self) -> dict[str, dict[str, str]]:
    """``{method: {task: network}}``."""
    return {m: {t: str(self.networks[i, j]) for j, t in enumerate(self.tasks) if self.networks[i, j]}
            for i, m in enumerate(self.methods)}

  def to_arrays(self) -> dict[str, np.ndarray]:
    arrays = {"budget": np.float64(self.budget), "images": np.asarray(self.images, np.float32),
              "tasks": np.asarray(self.tasks, str), "kinds": np.asarray(self.kinds, str),
              "methods": np.asarray(self.methods, str), "networks": self.networks}
    for j in range(len(self.tasks)):
      arrays[f"truth_{j}"], arrays[f"outputs_{j}"] = self.truth[j], self.outputs[j]
    return arrays

  @classmethod
  def from_arrays(cls, arrays) -> "Predictions":
    tasks = tuple(str(t) for t in arrays["tasks"])
    return cls(float(arrays["budget"]), arrays["images"], tasks, tuple(str(k) for k in arrays["kinds"]),
               tuple(arrays[f"truth_{j}"] for j in range(len(tasks))), tuple(str(m) for m in arrays["methods"]),
               arrays["networks"], tuple(arrays[f"outputs_{j}"] for j in range(len(tasks))))


@dataclasses.dataclass(frozen=True)
class Workdir:
  """Paths of one workdir (a run, its retraining phase or one shard of an array job)."""

  path: str

  def _join(self, *parts: str) -> str:
    return os.path.join(self.path, *parts)

  @property
  def config(self) -> str:
    return self._join("config.json")

  @property
  def lock(self) -> str:
    return self._join("lock")

  @property
  def checkpoints(self) -> str:
    return self._join("checkpoints")

  @property
  def damaged_checkpoints(self) -> str:
    """Where a resume moves checkpoints that do not read back whole."""
    return self._join("checkpoints_damaged")

  @property
  def results(self) -> str:
    return self._join("results")

  def table(self, split: str) -> str:
    if split not in SPLITS:
      raise ValueError(f"unknown results table {split!r}; tables: {', '.join(SPLITS)}")
    return self._join("results", f"{split}.csv")

  def examples(self, split: str) -> str:
    """``results/examples_<split>.npz``: per-example losses behind ``results/<split>.csv`` (``Examples``)."""
    if split not in EXAMPLE_SPLITS:
      raise ValueError(f"no per-example losses for {split!r}; splits with them: {', '.join(EXAMPLE_SPLITS)}")
    return self._join("results", f"examples_{split}.npz")

  @property
  def networks(self) -> str:
    return self._join("results", "networks.json")

  @property
  def methods(self) -> str:
    return self._join("results", "methods.json")

  @property
  def tag(self) -> str:
    return self._join("results", "tag.json")

  @property
  def log(self) -> str:
    return self._join("log.jsonl")

  @property
  def tensorboard(self) -> str:
    return self._join("tensorboard")

  @property
  def selection(self) -> str:
    return self._join("selection.json")

  @property
  def ensemble(self) -> str:
    return self._join("ensemble.json")

  @property
  def predictions(self) -> str:
    """``predictions.npz``: Figure 6's images, labels and predictions (``Predictions``)."""
    return self._join("predictions.npz")

  @property
  def report(self) -> str:
    return self._join("report.md")

  @property
  def figures(self) -> str:
    return self._join("figures")

  @property
  def study(self) -> str:
    return self._join("study.json")

  @property
  def retrain(self) -> "Workdir":
    return Workdir(self._join("retrain"))

  @property
  def transfer(self) -> "Workdir":
    """The transfer phase (``config.transfer.enabled``): decoders on frozen single-task encoders."""
    return Workdir(self._join("transfer"))

  def refine_round(self, index: int) -> "Workdir":
    """ESA refinement round ``index``'s training (1, 2, ...)."""
    return Workdir(self._join("refine", f"round_{index}"))

  def adaptive_training(self, index: int, early: bool) -> "Workdir":
    """The adaptive loop's ``index``-th training (1, 2, ...): screening (``early``) or to convergence."""
    return Workdir(self._join("adaptive", f"{index}_{'early' if early else 'full'}"))

  @property
  def adaptive(self) -> str:
    return self._join("adaptive.json")

  def shard(self, index: int, count: int) -> "Workdir":
    return Workdir(self._join("shards", f"shard_{index:03d}_of_{count:03d}"))

  def shards(self) -> list["Workdir"]:
    """The array-job shards present, in index order."""
    return [Workdir(p) for p in sorted(glob.glob(self._join("shards", "shard_*_of_*")))]

  def relative(self, path: str) -> str:
    """``path`` relative to this workdir, as the report names files."""
    return os.path.relpath(path, self.path)

  # Readers.

  def read_table(self, split: str) -> Optional[tables.Replicas]:
    """The split's table with every seed replica (one replica per network without a seed column)."""
    path = self.table(split)
    if not os.path.exists(path):
      return None
    try:
      return tables.read_replicas(path)
    except (OSError, UnicodeDecodeError) as error:
      raise WorkdirError(f"{path} cannot be read ({_reason(error)}); {_REWRITE}") from None

  def read_run(self) -> Optional[records.RunRecord]:
    """``results/networks.json``; None before a run has finished."""
    value = read_json(self.networks)
    if value is None:
      return None
    try:
      return records.RunRecord.from_json(value, source=self.networks)
    except (KeyError, TypeError, ValueError) as error:
      raise WorkdirError(f"{self.networks}: {error}") from None

  def read_examples(self, split: str) -> Optional[Examples]:
    """``results/examples_<split>.npz``; None if absent (runs before it existed, unfinished runs)."""
    path = self.examples(split)
    if not os.path.exists(path):
      return None
    try:
      with np.load(path) as arrays:
        return Examples(arrays["losses"], tuple(arrays["tasks"]), tuple(arrays["networks"]))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
      raise WorkdirError(f"{path} cannot be read ({_reason(error)}); {_REWRITE}") from None

  def read_validations(self) -> dict[str, list[tuple[int, float]]]:
    """Per network of the main run, ``(step, mean validation loss over its tasks)`` at each validation,
    from ``log.jsonl``'s ``eval`` events; empty without a log. Lines cut short by a kill are skipped."""
    curves: dict[str, list[tuple[int, float]]] = {}
    if not os.path.exists(self.log):
      return curves
    with open(self.log, encoding="utf-8", errors="replace") as f:
      for line in f:
        try:
          event = json.loads(line)
        except json.JSONDecodeError:
          continue
        if not isinstance(event, dict) or event.get("event") != "eval" or event.get("split") != "val":
          continue
        for name, losses in event.get("loss", {}).items():
          curves.setdefault(name, []).append((int(event["step"]), float(np.mean(list(losses.values())))))
    return curves

  def read_predictions(self) -> Optional["Predictions"]:
    """``predictions.npz``; None if absent (tables without checkpoints, or before ``finish``)."""
    if not os.path.exists(self.predictions):
      return None
    try:
      with np.load(self.predictions) as arrays:
        return Predictions.from_arrays(arrays)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
      raise WorkdirError(f"{self.predictions} cannot be read ({_reason(error)}); delete it and rerun "
                         f"python -m tg_jax.main (finish writes it from the checkpoints)") from None

  def write_predictions(self, predictions: "Predictions") -> None:
    """``predictions.npz``, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **predictions.to_arrays())
    write_atomic(self.predictions, buffer.getvalue())

  def read_config(self) -> Optional[dict[str, Any]]:
    """The run's ``config.json`` (an array job's: its first shard's) as a dict; None without one
    (tables from other code)."""
    for source in [self] + self.shards()[:1]:
      config = read_json(source.config)
      if config is not None:
        return config
    return None

  def read_methods(self) -> dict[str, Any]:
    return read_json(self.methods) or {}

  def read_tag(self) -> Optional[dict[str, Any]]:
    return read_json(self.tag)

  # Writers.

  def write_table(self, split: str, table: Union[tables.ResultsTable, tables.Replicas],
                  seed_column: Optional[bool] = None) -> None:
    """``results/<split>.csv`` (``seed_column``: see ``tables.to_csv``)."""
    tables.write_csv(table, self.table(split), seed_column)

  def write_examples(self, split: str, examples: Examples) -> None:
    """``results/examples_<split>.npz``, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, losses=examples.losses, tasks=np.asarray(examples.tasks, str),
             networks=np.asarray(examples.networks, str))
    write_atomic(self.examples(split), buffer.getvalue())

  def write_run(self, run: records.RunRecord) -> None:
    write_json(self.networks, run.to_json())


@dataclasses.dataclass(frozen=True)
class StudyTables:
  """Everything the study reads from a workdir (``load_study``).

  Attributes:
    val, test: validation and test losses of networks trained to convergence (the main run's when it
      ran its whole schedule, plus the retraining phase's); None when there are none yet.
    esa: validation losses at the early-stopping fraction of the main run, if recorded.
    main_converged: whether the main run trained for its whole schedule (an ESA-only run does not:
      then Optimal, HOA and the baselines, which need every candidate converged, are left out).
    methods: ``results/methods.json``: networks trained with a balancing method or soft sharing.
    tag: ``results/tag.json``: TAG's averaged lookahead affinities.
    ensemble: ``ensemble.json``: ensembling gains of the selection's networks.
    predictions: ``predictions.npz``: Figure 6's predictions of the chosen networks.
    runs: the ``RunRecord``s of the main run and of the retraining phase (when finished).
    retrained: names of the networks the retraining phase trained.
    replicas: every seed replica of ``val`` and ``test``'s networks, when some network has 2+.
    examples: those replicas' per-example losses, when every one of them has its
      ``examples_<split>.npz`` rows (the bootstrap then redraws evaluation examples too).
    refine: ``config.selection.refine`` of the run (``config.json``): ESA refinement rounds at most.
    refined: per finished ESA refinement round (``refine/round_<k>``), the keys of the networks it
      trained; their tables are in ``val`` and ``test``.
    transfer: the finished transfer phase's ``transfer/results/methods.json``: every
      ``<target>:from_<source>`` network's losses (``tg_jax.reporting.transfer``).
    transfer_csv: ``config.transfer.affinity_csv`` of the run: transfer affinities from elsewhere.
    adaptive: ``adaptive.json``: the adaptive loop's rounds, compute and selection (``training.adaptive``).
    helper_tasks: ``config.selection.helper_tasks`` of the run: tasks trained only to help the others.
      The tables hold the served tasks alone (``ResultsTable.with_helpers``): networks trained with a
      helper serve their other tasks; the results files on disk keep every column.
  """

  val: Optional[tables.ResultsTable]
  test: Optional[tables.ResultsTable]
  esa: Optional[tables.ResultsTable] = None
  main_converged: bool = True
  methods: dict = dataclasses.field(default_factory=dict)
  tag: Optional[dict] = None
  ensemble: Optional[dict] = None
  predictions: Optional[Predictions] = None
  runs: tuple[records.RunRecord, ...] = ()
  retrained: tuple[str, ...] = ()
  replicas: Optional[tuple[tables.Replicas, tables.Replicas]] = None
  examples: Optional[uncertainty.Examples] = None
  refine: int = 0
  refined: tuple[frozenset, ...] = ()
  transfer: dict = dataclasses.field(default_factory=dict)
  transfer_csv: str = ""
  adaptive: Optional[dict] = None
  helper_tasks: tuple[str, ...] = ()

  @property
  def task_names(self) -> tuple[str, ...]:
    return (self.val if self.val is not None else self.esa).task_names

  @property
  def schedule(self) -> Optional[records.Schedule]:
    """The main run's schedule (None for tables from other code)."""
    return self.runs[0].schedule if self.runs else None

  @property
  def networks(self) -> tuple[records.NetworkRecord, ...]:
    return tuple(n for run in self.runs for n in run.networks)

  def names_of(self, keys) -> list[str]:
    """Network names of ``(tasks, cost)`` table rows (``records.names_of``)."""
    return records.names_of(self.runs, keys, self.task_names + self.helper_tasks)


def _concat(first: Optional[tables.Replicas], second: Optional[tables.Replicas]) -> Optional[tables.Replicas]:
  if first is None or second is None:
    return first if second is None else second
  return first.concat(second)


def load_study(workdir: Workdir) -> StudyTables:
  """The main run's tables and records, the retraining phase's (once finished), methods, TAG, ensembles,
  the transfer phase's losses (once finished)."""
  val, test, esa = (workdir.read_table(split) for split in SPLITS)
  if val is None or test is None:
    missing = [workdir.relative(workdir.table(s)) for s, t in (("val", val), ("test", test)) if t is None]
    raise tables.TableError(f"{workdir.path!r} has no {' or '.join(missing)}; point --workdir at a workdir of "
                            f"python -m tg_jax.main (training writes them as it goes)")
  main_run = workdir.read_run()
  helpers = helper_tasks(workdir)

  def read(source: Workdir, split: str) -> Optional[tables.Replicas]:
    return served(source.read_table(split))

  def served(table: Optional[tables.Replicas]) -> Optional[tables.Replicas]:
    return table.with_helpers(helpers) if table is not None and helpers else table

  val, test, esa = served(val), served(test), served(esa)
  # Tables written by other code come without networks.json: they are taken as trained to convergence.
  main_converged = main_run is None or main_run.schedule.converged
  retrained_run = workdir.retrain.read_run()
  retrained_val = retrained_test = None
  if retrained_run is not None:  # an unfinished retraining phase's tables are not final yet
    retrained_val, retrained_test = read(workdir.retrain, "val"), read(workdir.retrain, "test")
  val = _concat(val if main_converged else None, retrained_val)
  test = _concat(test if main_converged else None, retrained_test)
  refine_runs = []
  while (round_run := workdir.refine_round(len(refine_runs) + 1).read_run()) is not None:
    round_dir = workdir.refine_round(len(refine_runs) + 1)
    val, test = _concat(val, read(round_dir, "val")), _concat(test, read(round_dir, "test"))
    refine_runs.append(round_run)
  runs = tuple(run for run in (main_run, retrained_run, *refine_runs) if run is not None)
  replicas = examples = None
  if val is not None and test is not None and val.replicated:
    replicas = (val, test.aligned_to(val))
    sources = ([workdir] + ([workdir.retrain] if retrained_run is not None else [])
               + [workdir.refine_round(k + 1) for k in range(len(refine_runs))])
    per_split = [_replica_examples(sources, split, split_replicas, runs)
                 for split, split_replicas in zip(EXAMPLE_SPLITS, replicas)]
    examples = None if any(e is None for e in per_split) else uncertainty.Examples(*per_split)
  return StudyTables(
      val=None if val is None else val.table, test=None if test is None else test.table,
      esa=None if esa is None else esa.table, main_converged=main_converged, replicas=replicas, examples=examples,
      methods=workdir.read_methods(), tag=workdir.read_tag(), ensemble=read_json(workdir.ensemble),
      predictions=workdir.read_predictions(), runs=runs,
      retrained=tuple(n.name for n in retrained_run.networks) if retrained_run else (),
      refine=_refine_rounds(workdir), refined=tuple(frozenset(n.key for n in run.networks) for run in refine_runs),
      transfer=workdir.transfer.read_methods() if workdir.transfer.read_run() is not None else {},
      transfer_csv=str((workdir.read_config() or {}).get("transfer", {}).get("affinity_csv", "")),
      adaptive=read_json(workdir.adaptive),
      helper_tasks=helpers)


def helper_tasks(workdir: Workdir) -> tuple[str, ...]:
  """``config.selection.helper_tasks`` of the run (``config.json``): tasks trained to help, never
  served; none without a config (tables from other code)."""
  return tuple((workdir.read_config() or {}).get("selection", {}).get("helper_tasks", ()))


def _refine_rounds(workdir: Workdir) -> int:
  """``config.selection.refine`` from the run's ``config.json``; 0 without one (tables from other code)."""
  return int((workdir.read_config() or {}).get("selection", {}).get("refine", 0))


def _replica_examples(sources: Sequence[Workdir], split: str, replicas: tables.Replicas,
                      runs: Sequence[records.RunRecord]) -> Optional[np.ndarray]:
  """``[networks, replicas, examples, tasks]`` per-example losses in ``replicas``' order (NaN where a
  network does not solve a task or has fewer replicas); None unless every replica has them."""
  losses: dict[str, dict[str, np.ndarray]] = {}
  for source in sources:
    examples = source.read_examples(split)
    if examples is None:
      return None
    losses.update(examples.by_network())
  names = {(r.key, r.seed): r.name for run in runs for r in run.networks if not r.method}
  table = replicas.table
  count = len(next(iter(next(iter(losses.values())).values()))) if losses else 0
  array = np.full(replicas.samples.shape[:2] + (count, table.num_tasks), np.nan, np.float32)
  for network, seeds in enumerate(replicas.seeds):
    for replica, seed in enumerate(seeds):
      name = names.get((table.network_key(network), seed))
      if name not in losses:
        return None
      for column, task in enumerate(table.task_names):
        if task in losses[name]:
          array[network, replica, :, column] = losses[name][task]
  return array
