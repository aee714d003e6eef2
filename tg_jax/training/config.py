"""The experiment presets; every file in ``experiments/`` starts from ``base_config(variant)``.

Variants, as in big_vision: ``--config=experiments/pairs.py`` is the CPU preset and
``--config=experiments/pairs.py:full`` the paper's. Each experiment file calls
``base_config(arg)`` (which parses the variant through ``parse_variant``, the one place that knows
them) and then sets only the keys in which it differs from the preset.

Every key the trainer reads is here, with what it means. ``validate`` checks a config before any
work starts, with errors that name the key and the fix.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import types

import ml_collections

CPU = "cpu"
FULL = "full"
VARIANTS = (CPU, FULL)


def parse_variant(arg: str | None) -> str:
  """The variant a config argument names: ``""`` (or ``None``) and ``"cpu"`` are ``"cpu"``.

  Raises a ValueError naming the known variants for anything else.
  """
  variant = arg or CPU
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}; known variants: {CPU} (the default, also ''), {FULL} "
                     f"(e.g. --config=experiments/pairs.py:{FULL})")
  return variant


def load_experiment(directory: str, name: str) -> types.ModuleType:
  """Loads the experiment file ``<directory>/<name>.py`` as a module, as ``--config`` does.

  Experiment files are run by path (``--config=experiments/pairs.py``), not imported as a package;
  this is for tests and tools that need an experiment's ``get_config``. Experiment files themselves
  build on ``base_config`` only, never on each other.
  """
  path = os.path.join(directory, f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"experiments_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def optimizer_config() -> ml_collections.ConfigDict:
  """The paper's optimiser: SGD with momentum, learning rate halved when the training loss plateaus."""
  optimizer = ml_collections.ConfigDict()
  optimizer.learning_rate = 0.2
  optimizer.momentum = 0.9
  optimizer.nesterov = False
  optimizer.plateau_factor = 0.5     # halve the learning rate ...
  optimizer.plateau_patience = 1     # ... after this many epochs without a lower training loss
  optimizer.plateau_rtol = 1e-3      # "lower" means by this relative margin
  optimizer.plateau_cooldown = 0
  optimizer.min_learning_rate = 1e-4
  return optimizer


def base_config(variant: str | None = CPU) -> ml_collections.ConfigDict:
  """The preset of ``variant`` (see ``parse_variant``): the networks HOA needs (every single-task
  and pair network plus half-size singles, 20 for five tasks), predicted groups by HOA.

  - ``"cpu"`` (also ``""``): 32x32 rendered scenes and ``models.default_config("cpu")``, 12 epochs of
    5% of the training set (300 steps at batch 8, an epoch every 25 steps). The learning rate halves
    after every epoch without a lower training loss, so by the end it has halved several times and
    the validation curves are nearly flat (the report's "Training regime" section says how flat). A
    step at batch 8 costs about half one at batch 16 (12 against 22 ms per network-step), which
    keeps the demo within 10 minutes on 2 cores (19 minutes at the earlier 400 steps of batch 16).
  - ``"full"``: the paper's setting: 256x256 images, the authors' small Xception
    (``models.default_config("paper")``), batch 64, 50 epochs, learning rate 0.2 halved after 2
    epochs without improvement, bfloat16 compute.
  """
  from tg_jax import data  # pylint: disable=g-import-not-at-top
  from tg_jax import models  # pylint: disable=g-import-not-at-top

  full = parse_variant(variant) == FULL
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = data.default_config()
  if full:
    config.data.image_size = 256
  config.tasks = data.default_tasks(config.data.name)
  config.model = models.default_config("paper" if full else "cpu")

  # Which networks to train (see ``tg_jax.training.networks.from_config``).
  config.networks = ml_collections.ConfigDict()
  config.networks.subsets = "pairs"         # "singles" | "pairs" | "all" | "" (none)
  config.networks.size = 1.0                # size of the subset networks, in standard networks
  config.networks.half_size_singles = True  # one extra single-task network per task at half_size
  config.networks.half_size = 0.5
  config.networks.extra = ()                # explicit names, e.g. ("depth+normals@0.8",)
  # Sizes (SNT) at which each all-task network of the list (equal weights and every method's) is also
  # trained, e.g. (1.5, 2, 3): the all-task baselines at larger budgets; never selection candidates.
  config.networks.all_task_sizes = ()
  # Seed replicas, every network trained once per seed: a count (1: seed 0 only) or seeds, e.g. (0, 5).
  config.networks.seeds = ml_collections.FieldReference(1, field_type=object)

  config.batch_size = 64 if full else 8     # global, over all devices and hosts
  config.eval_batch_size = 128 if full else 100
  # One "epoch" is this fraction of the training set (the paper validates every 20%); training
  # runs num_epochs of them, validating after each.
  config.epoch_fraction = 0.2 if full else 0.05
  config.num_epochs = 50 if full else 12
  # The Early Stopping Approximation table is the first validation at or after this fraction of
  # training; stop_fraction < 1 ends training early (for ESA-only experiments).
  config.esa_fraction = 0.2
  config.stop_fraction = 1.0

  config.optimizer = optimizer_config()
  if full:
    config.optimizer.plateau_patience = 2
  else:
    config.optimizer.learning_rate = 0.1

  config.half_precision = full              # bfloat16 compute (parameters stay float32)
  config.num_devices = 0                    # data-parallel devices per host; 0: all local devices
  # Networks per vmapped step; 0 picks the largest cohort chunk that fits in memory_fraction of
  # device memory (host memory on CPU).
  config.max_networks_per_chunk = 0
  config.memory_fraction = 0.8
  # How one step runs a chunk's networks: "vmap" (batched; fast on GPUs/TPUs), "loop" (one after
  # another inside the step; XLA:CPU runs vmapped per-network convolutions far slower), or "auto".
  config.network_parallelism = "auto"
  # Batches of the training split used to fit the constant predictor (the report's yardstick).
  config.baseline_batches = 32
  config.log_every_steps = 100 if full else 5

  config.selection = ml_collections.ConfigDict()
  config.selection.predict = "hoa"          # how main predicts unseen groups: "hoa", "esa", "none"
  config.selection.refine = 0               # ESA refinement rounds at most (paper section 6), 0: none
  # Tasks of config.tasks trained only to help the others (Caruana's extra outputs): networks may
  # include them (trained with their loss, equal weights), the tables keep their columns, but the
  # selection never serves them: e.g. ("edges3d",) with networks "depth+edges3d", ...
  config.selection.helper_tasks = ()
  # The adaptive loop after the main run (tg_jax.selection.adaptive; experiments/adaptive.py): its budget
  # in trainings (0: off), networks screened for esa_fraction of the schedule and promoted per round.
  config.selection.adaptive = ml_collections.ConfigDict()
  config.selection.adaptive.trainings = 0.0
  config.selection.adaptive.screen = 4
  config.selection.adaptive.promote = 2
  config.selection.adaptive.max_rounds = 20

  # Networks named "<tasks>[@size]:<method>" (in networks.extra) train with a tg_jax.balancing
  # method or with soft parameter sharing instead of equal task weights; they go to
  # results/methods.json, not to the selector's tables. Options per method, passed to
  # balancing.get, e.g. config.balancing_options.cagrad = {"c": 0.4}; dwa's period defaults to one
  # validation period (steps_per_epoch).
  config.balancing_options = ml_collections.ConfigDict()
  config.soft_sharing = ml_collections.ConfigDict()
  config.soft_sharing.weight = 1e-2         # L2 penalty between corresponding encoder weights

  # TAG (Fifty et al. 2021): lookahead inter-task affinities measured while one network trains,
  # written to results/tag.json.
  config.tag = ml_collections.ConfigDict()
  config.tag.enabled = False
  config.tag.every_steps = 10
  config.tag.network = ""                   # "": the equal-weight network of all config.tasks, size 1

  config.evaluation = ml_collections.ConfigDict()
  config.evaluation.ensemble = False        # after selection, ensemble chosen networks sharing a task

  # Transfer affinity (Taskonomy's; the paper's Table 3 and Figure 3). enabled: after training, finish
  # trains every "<target>:from_<source>" network in WORKDIR/transfer: the target's decoder on the
  # frozen encoder of the source's 1-SNT single-task network (best checkpoint, same seed).
  config.transfer = ml_collections.ConfigDict()
  config.transfer.enabled = False
  # The workdir whose single-task networks give transfer networks their frozen encoders, relative to
  # this run's workdir (the transfer phase sets ".."): needed when networks.extra lists transfer networks.
  config.transfer.encoders = ""
  # A transfer-affinity matrix from elsewhere (e.g. Taskonomy's published affinities) as CSV
  # (tg_jax/reporting/transfer.py reads it); the report sets it against the multi-task affinity too.
  config.transfer.affinity_csv = ""
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad key and how to fix it."""
  def need(condition: bool, message: str) -> None:
    if not condition:
      raise ValueError(f"invalid config: {message}")

  need(config.batch_size >= 1, f"batch_size must be >= 1, got {config.batch_size}")
  need(config.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {config.eval_batch_size}")
  need(0 < config.epoch_fraction <= 1, f"epoch_fraction must be in (0, 1], got {config.epoch_fraction}")
  need(config.num_epochs >= 1, f"num_epochs must be >= 1, got {config.num_epochs}")
  need(0 < config.esa_fraction <= 1, f"esa_fraction must be in (0, 1], got {config.esa_fraction}")
  need(0 < config.stop_fraction <= 1, f"stop_fraction must be in (0, 1], got {config.stop_fraction}")
  need(config.optimizer.learning_rate > 0, f"optimizer.learning_rate must be > 0, got {config.optimizer.learning_rate}")
  need(0 <= config.optimizer.momentum < 1, f"optimizer.momentum must be in [0, 1), got {config.optimizer.momentum}")
  need(0 < config.optimizer.plateau_factor < 1,
       f"optimizer.plateau_factor must be in (0, 1) (0.5 halves the rate), got {config.optimizer.plateau_factor}")
  need(0 <= config.optimizer.min_learning_rate <= config.optimizer.learning_rate,
       "optimizer.min_learning_rate must be in [0, optimizer.learning_rate]")
  need(config.num_devices >= 0, f"num_devices must be >= 0 (0: all local devices), got {config.num_devices}")
  need(config.max_networks_per_chunk >= 0,
       f"max_networks_per_chunk must be >= 0 (0: as many as fit), got {config.max_networks_per_chunk}")
  need(0 < config.memory_fraction <= 1, f"memory_fraction must be in (0, 1], got {config.memory_fraction}")
  need(config.network_parallelism in ("auto", "vmap", "loop"),
       f"network_parallelism must be 'auto', 'vmap' or 'loop', got {config.network_parallelism!r}")
  need(config.log_every_steps >= 1, f"log_every_steps must be >= 1, got {config.log_every_steps}")
  seeds = config.networks.get("seeds", 1)
  is_int = lambda value: isinstance(value, int) and not isinstance(value, bool)
  listed = isinstance(seeds, (list, tuple)) and seeds and all(is_int(s) and s >= 0 for s in seeds)
  need((is_int(seeds) and seeds >= 1) or (listed and len(set(seeds)) == len(seeds)),
       f"networks.seeds must be a count >= 1 or a non-empty list of distinct seeds >= 0, got {seeds!r}; "
       f"e.g. networks.seeds = 3 (seeds 0, 1, 2) or networks.seeds = (0, 5)")
  from tg_jax.selection import predictors  # pylint: disable=g-import-not-at-top
  predictions = ("none", "esa") + predictors.NAMES
  need(config.selection.predict in predictions,
       f"selection.predict must be one of {', '.join(predictions)}, got {config.selection.predict!r}")
  need(is_int(config.selection.refine) and config.selection.refine >= 0,
       f"selection.refine must be a count of rounds >= 0, got {config.selection.refine!r}")
  _validate_helper_tasks(tuple(config.tasks), config.selection.get("helper_tasks", ()))
  if config.selection.adaptive.trainings:
    need(not config.selection.get("helper_tasks", ()),
         "selection.adaptive grows groups of served tasks and takes no helper tasks; set selection.helper_tasks "
         "= () or selection.adaptive.trainings = 0")
    from tg_jax.selection import adaptive  # pylint: disable=g-import-not-at-top
    try:
      adaptive.Settings(float(config.selection.adaptive.trainings), config.esa_fraction,
                        config.selection.adaptive.screen, config.selection.adaptive.promote,
                        config.selection.adaptive.max_rounds)
    except ValueError as error:
      raise ValueError(f"invalid config: selection.{error}") from None
  from tg_jax import balancing  # pylint: disable=g-import-not-at-top
  for method, options in config.get("balancing_options", {}).items():
    need(method in balancing.names(),
         f"balancing_options.{method}: unknown balancing method; known methods: {', '.join(balancing.names())}")
    try:
      balancing.get(method, **dict(options))
    except (TypeError, ValueError) as error:
      raise ValueError(f"invalid config: balancing_options.{method}: {error}") from None
  if "soft_sharing" in config:
    need(config.soft_sharing.weight >= 0, f"soft_sharing.weight must be >= 0, got {config.soft_sharing.weight}")
  if "tag" in config:
    need(config.tag.every_steps >= 1, f"tag.every_steps must be >= 1, got {config.tag.every_steps}")
  _validate_parts(config)


def served_tasks(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """``config.tasks`` without ``selection.helper_tasks``: the tasks a selection serves."""
  helpers = set(config.selection.get("helper_tasks", ()))
  return tuple(t for t in config.tasks if t not in helpers)


def _validate_helper_tasks(tasks: tuple[str, ...], helpers) -> None:
  """``selection.helper_tasks`` names distinct tasks of ``config.tasks`` and leaves one to serve."""
  helpers = tuple(helpers)
  unknown = [h for h in helpers if h not in tasks]
  if unknown:
    raise ValueError(f"invalid config: selection.helper_tasks names {unknown}, not in config.tasks "
                     f"({', '.join(tasks)}); a helper task is trained, so list it in config.tasks too")
  if len(set(helpers)) != len(helpers):
    raise ValueError(f"invalid config: selection.helper_tasks names a task twice: {helpers}")
  if set(helpers) >= set(tasks):
    raise ValueError(f"invalid config: selection.helper_tasks names every task of config.tasks; leave at least "
                     f"one task to serve")


# Groups of keys whose members are not fixed by ``base_config``: the model family's and the dataset's
# options are checked against theirs, balancing options by ``balancing.get``.
_OPEN_GROUPS = ("model", "data", "balancing_options")


def flat_keys(tree, prefix: str = "") -> list[str]:
  """The dotted names of a config's leaves, e.g. ``optimizer.learning_rate``."""
  keys = []
  for key, value in tree.items():
    if isinstance(value, ml_collections.ConfigDict):
      keys += flat_keys(value, f"{prefix}{key}.")
    else:
      keys.append(f"{prefix}{key}")
  return keys


def unknown_key_error(key: str, known: list[str]) -> str:
  """One line for a config key that no part reads: the key, the closest known key, the fix."""
  close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
  hint = f"; did you mean {close[0]}?" if close else ""
  return (f"invalid config: unknown key {key}{hint} (no part of tg_jax reads it: remove it or fix its name; "
          f"keys are listed in tg_jax/training/config.py's base_config)")


def _validate_parts(config: ml_collections.ConfigDict) -> None:
  """The parts a config names exist and fit together: every key is known, the model family, the
  dataset and its tasks, the network list and its methods, the devices. Runs before anything is
  written to the workdir, so a typo leaves no trace there."""
  from tg_jax import data  # pylint: disable=g-import-not-at-top
  from tg_jax import models  # pylint: disable=g-import-not-at-top
  from tg_jax import records  # pylint: disable=g-import-not-at-top
  from tg_jax.models import registry  # pylint: disable=g-import-not-at-top
  from tg_jax.training import networks as networks_lib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  def fail(message: str) -> None:
    raise ValueError(f"invalid config: {message}")

  if config.model.get("name") not in registry.names():
    fail(f"model.name: unknown model {config.model.get('name')!r}; known models: {', '.join(registry.names())}")
  if config.data.get("name") not in data.names():
    fail(f"data.name: unknown dataset {config.data.get('name')!r}; known datasets: {', '.join(data.names())}")
  known = [k for k in flat_keys(base_config(CPU)) if k.split(".")[0] not in _OPEN_GROUPS]
  known += [f"model.{k}" for scale in ("cpu", "paper")
            for k in flat_keys(models.default_config(scale, config.model.name))]
  known += [f"data.{k}" for k in data.config_keys(config.data.name)]
  for key in flat_keys(config):
    if key.split(".")[0] != "balancing_options" and key not in known:
      raise ValueError(unknown_key_error(key, sorted(set(known))))
  provided = data.dataset_tasks(config.data.name)
  for task in config.tasks:
    if task not in provided:
      close = difflib.get_close_matches(str(task), provided, n=1)
      fail(f"tasks: dataset {config.data.name!r} has no task {task!r}"
           + (f" (did you mean {close[0]}?)" if close else "") + f"; its tasks: {', '.join(provided)}")
  try:
    data.check_tasks(config.data.name, tuple(config.tasks))
    listed = networks_lib.from_config(config)
    for method in {n.method for n in listed} & set(records.ARCHITECTURES):
      models.as_family(config.model, method)
    transfer_networks = [n.name for n in listed if n.transfer_source]
  except ValueError as error:
    fail(str(error))
  if transfer_networks and not config.get("transfer", {}).get("encoders"):
    fail(f"networks {', '.join(transfer_networks[:3])}{'...' if len(transfer_networks) > 3 else ''} decode frozen "
         f"encoders of another run's single-task networks; set transfer.encoders to that run's workdir (or set "
         f"transfer.enabled, which trains them after this run)")
  if config.num_devices:
    if jax.process_count() > 1:
      fail("num_devices selects local devices of a single host; leave it 0 on multi-host runs")
    if config.num_devices > jax.local_device_count():
      fail(f"num_devices={config.num_devices} but this host has {jax.local_device_count()} devices; lower "
           f"num_devices or leave it 0 for all")
  devices = config.num_devices or jax.device_count()
  for name, size in (("batch_size", config.batch_size), ("eval_batch_size", config.eval_batch_size)):
    if size % devices:
      fail(f"{name}={size} must be divisible by the {devices} devices; change {name} or num_devices")
