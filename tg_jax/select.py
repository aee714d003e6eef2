r"""Chooses networks for each inference budget from results tables; no training, no JAX.

  python -m tg_jax.select --results=WORKDIR/results/val.csv --test_results=WORKDIR/results/test.csv \
      --predict=hoa --budgets=1,1.5,2 --json=selection.json

  # Tables with a seed column (tasks,cost,seed,...; rows of one network's seeds): selection on the mean
  # over seeds, with 95% intervals, the probability that each grouping is optimal and paired
  # differences against the baselines, from --bootstrap resamples:
  python -m tg_jax.select --results=val.csv --test_results=test.csv --bootstrap=1000

  # Other grouping predictors (tg_jax.selection.predictors): a surrogate fitted on the trained networks,
  # TAG's affinities or its gradient-cosine variant from an all-task run:
  python -m tg_jax.select --results=val.csv --test_results=test.csv --predict=surrogate
  python -m tg_jax.select --results=val.csv --predict=tag --affinities=WORKDIR/results/tag.json

  # Helper tasks (trained as extra outputs of some networks, never served): their columns are dropped
  # and a network such as depth+edges3d is a candidate for depth. Read from WORKDIR/config.json
  # (config.selection.helper_tasks) when --results is a workdir's table; --helper_tasks= for none.
  python -m tg_jax.select --results=val.csv --test_results=test.csv --helper_tasks=edges3d,curvature

  # The authors' published tables (Early Stopping Approximation: select on ESA losses, assign tasks
  # by the converged networks' validation losses, score on test):
  python -m tg_jax.select --format=standley --results=setting1_esa.tsv \
      --converged_results=setting1_val.tsv --test_results=setting1_test.tsv
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Optional

from absl import app, flags

from tg_jax import console
from tg_jax import workdir as workdir_lib
from tg_jax.selection import predictors, selector, study, tables, uncertainty

_RESULTS = flags.DEFINE_string("results", None, "Table the selection runs on (validation losses, or ESA losses).")
_TEST_RESULTS = flags.DEFINE_string("test_results", None, "Test losses of the same networks; scores the choices.")
_CONVERGED_RESULTS = flags.DEFINE_string(
    "converged_results", None,
    "Validation losses of fully trained networks, used to assign tasks to chosen networks when --results "
    "holds early (ESA) losses. Default: --results itself.")
_FORMAT = flags.DEFINE_enum("format", "csv", list(tables.READERS), "Table format: csv (tasks,cost,<task>...) or "
                            "standley (the authors' tab-separated files).")
_TASK_NAMES = flags.DEFINE_list("task_names", None, "Column names for --format=standley (default s,d,n,k,e).")
_PREDICT = flags.DEFINE_enum("predict", "none", list(study.PREDICTIONS),
                             "Select among predicted groups too: hoa (groups of 3+ tasks from the pair networks), "
                             "surrogate (a ridge regression fitted on the networks in --results), tag or tag_cosine "
                             "(TAG's lookahead affinities or gradient cosines, --affinities).")
_AFFINITIES = flags.DEFINE_string("affinities", None, "--predict=tag/tag_cosine: TAG's measurements, "
                                  "WORKDIR/results/tag.json.")
_SURROGATE_SAMPLE = flags.DEFINE_float("surrogate_sample", 1.0, "--predict=surrogate: the share of --results' "
                                       "networks of 3+ tasks it is fitted on (the rest count as not trained; singles "
                                       "and pairs are always used).")
_BUDGETS = flags.DEFINE_list("budgets", None, "Inference budgets in SNT (default 1 to #tasks in steps of 0.5).")
_JSON = flags.DEFINE_string("json", None, "Write the solutions and baselines as JSON here.")
_WEIGHTS = flags.DEFINE_list("weights", None, "Objective weights, task=weight,... (default 1 each).")
_NORMALISE = flags.DEFINE_enum("normalise", "none", ["none", "single"],
                               "single: divide each task's losses by its full single-task network's loss.")
_CAPS = flags.DEFINE_list("caps", None, "Hard caps, task=max_loss,...: a task may only be served by a network "
                          "whose loss on it is at most max_loss.")
_RANDOM_SAMPLES = flags.DEFINE_integer("random_samples", 1000, "Random valid solutions averaged for the baseline.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random baseline and of the bootstrap.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", uncertainty.DEFAULT_RESAMPLES,
                                  "Bootstrap resamples of the seed replicas (tables with a seed column); 0: none.")
_MAX_GROUP_SIZE = flags.DEFINE_integer("max_group_size", None, "--predict: the largest group predicted "
                                      "(default: all tasks; needed past 16 tasks, where a predictor lists too many "
                                      "groups).")
_HELPER_TASKS = flags.DEFINE_list("helper_tasks", None, "Tasks of the tables trained only to help the others, never "
                                  "served (default: the workdir's config.selection.helper_tasks when --results is "
                                  "WORKDIR/results/<split>.csv; --helper_tasks= for none).")
_PROGRESS_AFTER = flags.DEFINE_float("progress_after", 2.0, "Report each stage on stderr once the selection has run "
                                     "this many seconds (0: always).")
_RISK_QUANTILE = flags.DEFINE_float("risk_quantile", None, "Select on each network's upper quantile over its seeds "
                                    "(e.g. 0.9) instead of its mean: prefer networks whose one training run is "
                                    "reliably good. Needs a seed column.")


def _parse_mapping(entries: Optional[list[str]], flag: str) -> Optional[dict[str, float]]:
  if not entries:
    return None
  mapping = {}
  for entry in entries:
    task, _, value = entry.partition("=")
    task = task.strip()
    try:
      number = float(value)
    except ValueError:
      raise console.UsageError(f"--{flag}: {entry!r} is not task=number, e.g. --{flag}=depth=0.2,normals=0.1") from None
    if math.isnan(number):
      raise console.UsageError(f"--{flag}: {entry!r} is not a number; give {task} a number, e.g. --{flag}={task}=0.2")
    if task in mapping:
      raise console.UsageError(f"--{flag}: {task!r} is given twice ({mapping[task]:g} and {number:g}); give each task once")
    mapping[task] = number
  return mapping


def _parse_budgets(entries: Optional[list[str]]) -> Optional[list[float]]:
  if not entries:
    return None
  try:
    return [float(b) for b in entries]
  except ValueError:
    raise console.UsageError(f"--budgets: {','.join(entries)!r} is not a list of numbers, e.g. --budgets=1,1.5,2") from None


def _read(path: str) -> tables.Replicas:
  if _FORMAT.value == "csv":
    if _TASK_NAMES.value:
      raise console.UsageError("task names come from the CSV header; --task_names is only for --format=standley")
    return tables.read_replicas(path)
  return tables.Replicas.from_table(tables.read(path, _FORMAT.value, _TASK_NAMES.value))


def _helper_tasks(table: tables.ResultsTable) -> tuple[str, ...]:
  """``--helper_tasks``, else the helpers of the workdir whose table ``--results`` is; each a column."""
  helpers = _HELPER_TASKS.value
  if helpers is None:
    workdir = workdir_lib.Workdir(os.path.dirname(os.path.dirname(os.path.abspath(_RESULTS.value))))
    is_workdir_table = any(os.path.abspath(_RESULTS.value) == os.path.abspath(workdir.table(split))
                           for split in workdir_lib.SPLITS)
    helpers = workdir_lib.helper_tasks(workdir) if is_workdir_table else ()
  console.check_helper_tasks(helpers, table.task_names, _RESULTS.value)
  return tuple(helpers)


def _read_affinities(path: str) -> predictors.Affinities:
  try:
    with open(path, encoding="utf-8") as f:
      return predictors.Affinities.from_json(json.load(f))
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise console.UsageError(f"--affinities={path}: not a readable tag.json ({error}); point it at WORKDIR/results/tag.json "
                     "of a run with config.tag.enabled") from None


def _progress_printer():
  """Prints a stage's line on stderr, once the command has run ``--progress_after`` seconds."""
  start = time.monotonic()

  def progress(line: str) -> None:
    elapsed = time.monotonic() - start
    if elapsed >= _PROGRESS_AFTER.value:
      print(f"[{elapsed:.0f} s] {line}", file=sys.stderr, flush=True)

  return progress


def run_command() -> str:
  """Runs the command from parsed flags; returns the text to print."""
  if not _RESULTS.value:
    raise console.UsageError("--results is required: the path of a results table, e.g. WORKDIR/results/val.csv")
  if _RANDOM_SAMPLES.value < 0:
    raise console.UsageError(f"--random_samples must be >= 0 (0: no Random baseline), got {_RANDOM_SAMPLES.value}")
  if _MAX_GROUP_SIZE.value is not None and _PREDICT.value == "none":
    raise console.UsageError("--max_group_size limits a predictor's groups; it needs --predict (e.g. --predict=hoa)")
  if _AFFINITIES.value and not _PREDICT.value.startswith("tag"):
    raise console.UsageError("--affinities feeds TAG; it needs --predict=tag or --predict=tag_cosine")
  if _SURROGATE_SAMPLE.value != 1.0 and _PREDICT.value != "surrogate":
    raise console.UsageError("--surrogate_sample is the surrogate's; it needs --predict=surrogate")
  affinities = _read_affinities(_AFFINITIES.value) if _AFFINITIES.value else None
  val_replicas = _read(_RESULTS.value)
  test_replicas = _read(_TEST_RESULTS.value) if _TEST_RESULTS.value else None
  converged_replicas = _read(_CONVERGED_RESULTS.value) if _CONVERGED_RESULTS.value else None
  helpers = _helper_tasks(val_replicas.table)
  if helpers:
    val_replicas, test_replicas, converged_replicas = (None if r is None else r.with_helpers(helpers)
                                                       for r in (val_replicas, test_replicas, converged_replicas))
  val, test = val_replicas.table, test_replicas.table if test_replicas else None
  converged = converged_replicas.table if converged_replicas else None
  reference = converged or val
  # Intervals need every replica of the networks that assign tasks (the converged ones) and their test.
  assigning = converged_replicas or val_replicas
  replicas = None
  if test_replicas is not None and assigning.replicated:
    replicas = (assigning, test_replicas)
  elif _RISK_QUANTILE.value is not None:
    raise console.UsageError("--risk_quantile needs seed replicas: tables with a seed column (tasks,cost,seed,...) for "
                     "--results (or --converged_results) and --test_results")
  objective = selector.Objective(weights=_parse_mapping(_WEIGHTS.value, "weights"),
                                 caps=_parse_mapping(_CAPS.value, "caps"))
  notes = [f"helper tasks (trained, never served): {', '.join(helpers)}"] if helpers else []
  if _NORMALISE.value == "single":
    objective = selector.Objective(weights=objective.weights, caps=objective.caps,
                                   normalisers=selector.Objective.normalised_by(reference).normalisers)
    fallbacks = selector.Objective.normalisation_fallbacks(reference)
    if fallbacks:
      notes.append(f"note: --normalise=single: no full-size (1 SNT) single-task network for "
                   f"{', '.join(fallbacks)}; normalised by the largest one instead")
  result = study.run(val, test, predict=_PREDICT.value, budgets=_parse_budgets(_BUDGETS.value),
                     objective=objective, converged=converged, random_samples=_RANDOM_SAMPLES.value,
                     seed=_SEED.value, replicas=replicas, bootstrap=_BOOTSTRAP.value,
                     risk_quantile=_RISK_QUANTILE.value, max_group_size=_MAX_GROUP_SIZE.value,
                     affinities=affinities,
                     predictor_options={"sample": _SURROGATE_SAMPLE.value} if _PREDICT.value == "surrogate" else None,
                     progress=_progress_printer())
  if all(solution.infeasible for solution in result.solutions):
    raise selector.NoFeasibleSolution(result.solutions[0].infeasible)
  text = "\n".join(notes + [study.format_text(result)])
  if _JSON.value:
    directory = os.path.dirname(os.path.abspath(_JSON.value))
    os.makedirs(directory, exist_ok=True)
    with open(_JSON.value, "w", encoding="utf-8") as f:
      json.dump(result.to_json(), f, indent=2)
    text += f"\n\nwrote {_JSON.value}"
  return text


main = console.table_command_main(run_command)


if __name__ == "__main__":
  app.run(main)
