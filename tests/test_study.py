"""The study: its config, the retraining phase of predicted choices, and the report's method sections."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tg_jax import finish
from tg_jax import workdir as workdir_lib
from tg_jax.reporting import analysis, report
from tg_jax.selection import study, tables
from tg_jax.training import config as config_lib
from tg_jax.training import networks

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("a", "b", "c")
HALF = 0.4987  # a measured half-size cost: nominal 0.5
SCHEDULE = {"steps_per_epoch": 25, "total_steps": 125, "stop_step": 125, "eval_steps": [25, 50, 75, 100, 125],
            "esa_step": 25}

# Validation losses: pairs help (a+b most), so HOA predicts a+b+c = (0.65, 0.70, 0.75) and, alone able to
# serve every task at budget 1, chooses it there; at budget 2 the pairs a+b and a+c are best.
VAL_ROWS = [
    (("a",), HALF, {"a": 1.0}), (("b",), HALF, {"b": 1.0}), (("c",), HALF, {"c": 1.0}),
    (("a",), 1.0, {"a": 0.9}), (("b",), 1.0, {"b": 0.9}), (("c",), 1.0, {"c": 0.9}),
    (("a", "b"), 1.0, {"a": 0.6, "b": 0.6}), (("a", "c"), 1.0, {"a": 0.7, "c": 0.7}),
    (("b", "c"), 1.0, {"b": 0.8, "c": 0.8}),
]
TRIPLE_ROW = (("a", "b", "c"), 1.0, {"a": 0.62, "b": 0.66, "c": 0.74})
INDEPENDENT_ROWS = [((t,), 0.2, {t: 1.5}) for t in TASKS]


def _table(rows, scale=1.0):
  # Like the trainer, only the columns of tasks some network solves.
  solved = tuple(t for t in TASKS if any(t in tasks for tasks, _, _ in rows))
  return tables.ResultsTable.from_rows(solved, [(t, c, {k: v * scale for k, v in l.items()}) for t, c, l in rows])


def _name(tasks, cost):
  size = 0.5 if cost == HALF else cost
  return "+".join(tasks) + ("" if size == 1.0 else f"@{size:g}")


def _networks_json(rows, schedule):
  records = [{"name": _name(t, c), "tasks": list(t), "size": 0.5 if c == HALF else c, "method": "", "cost": c,
              "status": "trained", "best_step": schedule["stop_step"], "val": l, "test": l, "esa": l, "val_peak": l,
              "val_peak_step": dict.fromkeys(l, schedule["stop_step"]),
              "improvement_over_constant": {"val": {k: 1 - v / 2.0 for k, v in l.items()},
                                            "test": {k: 1 - v / 2.0 for k, v in l.items()}}} for t, c, l in rows]
  return {"networks": records, "constant_predictor": {"validation": dict.fromkeys(TASKS, 2.0),
                                                      "test": dict.fromkeys(TASKS, 2.0)}, "schedule": schedule}


def _missing(workdir):
  """The networks the retraining phase would train now."""
  study_tables = workdir_lib.load_study(workdir_lib.Workdir(workdir))
  return finish.missing_networks(study_tables, analysis.selections(study_tables))


def _write_run(directory, rows, schedule=SCHEDULE, test_scale=1.05, esa_scale=1.2):
  os.makedirs(os.path.join(directory, "results"), exist_ok=True)
  tables.write_csv(_table(rows), os.path.join(directory, "results", "val.csv"))
  tables.write_csv(_table(rows, test_scale), os.path.join(directory, "results", "test.csv"))
  if esa_scale:
    tables.write_csv(_table(rows, esa_scale), os.path.join(directory, "results", "esa.csv"))
  with open(os.path.join(directory, "results", "networks.json"), "w") as f:
    json.dump(_networks_json(rows, schedule), f)


class FakeTrainer:
  """Stands in for trainer.train_and_evaluate: writes converged tables for the networks it is asked
  to train (the triple's losses from TRIPLE_ROW, others from VAL_ROWS x 0.95)."""

  def __init__(self, overrides=None):
    """``overrides``: ``{frozenset(tasks): converged losses}`` replacing those rules."""
    self.calls = []
    self.overrides = overrides or {}

  def __call__(self, config, workdir):
    self.calls.append((config, workdir))
    known = {frozenset(t): (t, c, l) for t, c, l in VAL_ROWS + [TRIPLE_ROW] if c != HALF}
    known.update({(frozenset(t), "half"): (t, c, l) for t, c, l in VAL_ROWS if c == HALF})
    rows = []
    for name in config.networks.extra:
      network = networks.parse(name, TASKS)
      tasks, cost, losses = known[(frozenset(network.tasks), "half") if network.size == 0.5 else frozenset(network.tasks)]
      rows.append((tasks, cost, self.overrides.get(frozenset(tasks)) or
                   {k: v * (1 if len(tasks) == 3 else 0.95) for k, v in losses.items()}))
    _write_run(workdir, rows, test_scale=1.1, esa_scale=None)
    return {"status": "complete", "workdir": workdir}


def _load(name, variant):
  return config_lib.load_experiment(os.path.join(REPO_ROOT, "experiments"), name).get_config(variant)


@pytest.mark.parametrize("variant", ["", "full"])
def test_study_config_lists_subsets_halves_fractional_and_wider_all_task_networks(variant):
  config = _load("study", variant)
  config_lib.validate(config)
  every_replica = networks.from_config(config)
  per_seed = 31 + 5 + 6 * 5 + 1 + 2 * 5
  assert config.networks.seeds == 3 and len(every_replica) == 3 * per_seed
  listed = [n for n in every_replica if n.seed == 0]  # the other seeds repeat this list
  names = [n.name for n in listed]
  tasks = tuple(config.tasks)
  everything = "+".join(tasks)
  assert len(tasks) == 5 and config.stop_fraction == 1.0 and config.selection.predict == "none"
  assert sum(n.size == 1.0 and not n.method for n in listed) == 31  # every subset (Optimal, HOA's pairs, ESA's early table)
  # The independent baseline's sizes and Figure 2's 1/k (k = 2..5).
  for task in tasks:
    assert [f"{task}@{s:g}" in names for s in (0.2, 0.25, 0.3, 1 / 3, 0.4, 0.5, 0.8)] == [True] * 7
  # The paper's Sener et al. row, and both all-task networks at every larger size.
  assert [n.name for n in listed if n.method] == [f"{everything}:mgda"] + [
      f"{everything}@{s:g}:mgda" for s in (1.5, 2, 2.5, 3, 4)]
  assert [n.size for n in listed if n.tasks == tasks and not n.method] == [1.0, 1.5, 2, 2.5, 3, 4]
  assert len(listed) == per_seed
  assert config.tag.enabled and config.evaluation.ensemble


def test_independent_sizes_are_not_selection_candidates():
  table = _table(VAL_ROWS + INDEPENDENT_ROWS)
  candidates = analysis.selection_candidates(table)
  assert candidates.num_networks == len(VAL_ROWS)
  result = analysis.compare_methods(workdir_lib.StudyTables(val=_table(VAL_ROWS + [TRIPLE_ROW] + INDEPENDENT_ROWS),
                                                           test=_table(VAL_ROWS + [TRIPLE_ROW] + INDEPENDENT_ROWS)),
                                    budgets=[1.0], random_samples=20)
  # Budget 1 fits five 0.2 networks: the independent baseline uses them, the selector may not.
  assert result.methods["independent"] == [pytest.approx(4.5)]
  assert result.runs["optimal"].solutions[0].networks == (study.ChosenNetwork(TASKS, 1.0),)


def test_retraining_trains_exactly_the_predicted_choices_without_converged_results(tmp_path):
  workdir = str(tmp_path / "pairs")
  _write_run(workdir, VAL_ROWS)
  # HOA's choice at budgets 1 and 1.5 is the untrained triple; ESA chooses among trained networks.
  assert _missing(workdir) == ["a+b+c"]
  trainer = FakeTrainer()
  config = _load("pairs", "")
  config.tasks = TASKS
  assert finish.finish(config, workdir, train=trainer, random_samples=20) is not None
  assert len(trainer.calls) == 1
  derived, directory = trainer.calls[0]
  assert directory == os.path.join(workdir, "retrain")
  assert list(derived.networks.extra) == ["a+b+c"] and derived.networks.subsets == ""
  assert not derived.networks.half_size_singles and derived.stop_fraction == 1.0
  # Resumable: once converged, nothing is missing and nothing is trained again.
  assert _missing(workdir) == []
  finish.finish(config, workdir, train=trainer, random_samples=20)
  assert len(trainer.calls) == 1
  text = open(os.path.join(workdir, "report.md")).read()
  hoa_budget1 = 1.1 * (0.62 + 0.66 + 0.74)  # the retrained triple's test losses
  assert f"| hoa | {hoa_budget1:.3f} | " in text
  assert "retrain/results/val.csv" in text and "a+b+c" in text
  # With the triple retrained, every group of the 3 tasks has converged results: the optimum is known.
  assert "| optimal |" in text and "| selected |" not in text
  # HOA trained the singles and pairs, then the one triple it chose (counted once, over all budgets).
  assert "| hoa | 10 | " in text and "9 singles, half-size singles and pairs + 1 chosen network |" in text


def test_selection_among_trained_networks_when_not_every_subset_is(tmp_path):
  workdir = str(tmp_path / "pairs")
  _write_run(workdir, VAL_ROWS)
  text = open(report.write_report(workdir, budgets=[1, 2], random_samples=20)).read()
  assert "| selected | - |" in text and "| optimal |" not in text  # budget 1: no trained network serves all


def test_esa_only_run_retrains_every_esa_choice(tmp_path):
  workdir = str(tmp_path / "esa")
  _write_run(workdir, VAL_ROWS, schedule=dict(SCHEDULE, stop_step=25, eval_steps=[25]))
  # ESA on pairs and halves, budgets 1..3: infeasible, a+b & c@0.5, then a+b & a+c.
  assert sorted(_missing(workdir)) == ["a+b", "a+c", "c@0.5"]
  config = _load("esa", "")
  config.tasks = TASKS
  finish.finish(config, workdir, train=FakeTrainer(), random_samples=20)
  assert _missing(workdir) == []
  text = open(os.path.join(workdir, "report.md")).read()
  esa_row = next(line for line in text.splitlines() if line.startswith("| esa |")).split("|")[2:-1]
  assert esa_row[0].strip() == "-"  # budget 1: no candidate serves every task
  # Budget 2: a+b and a+c, scored with their retrained (converged) test losses.
  assert float(esa_row[2]) == pytest.approx(1.1 * 0.95 * (0.6 + 0.6 + 0.7), abs=1e-3)
  assert "| optimal |" not in text and "| random |" not in text  # nothing else converged


@pytest.fixture()
def method_workdir(tmp_path):
  workdir = str(tmp_path / "methods")
  _write_run(workdir, VAL_ROWS + [TRIPLE_ROW])
  results = os.path.join(workdir, "results")
  with open(os.path.join(results, "methods.json"), "w") as f:
    json.dump({"a+b+c:mgda": {"method": "mgda", "tasks": list(TASKS), "size": 1.0, "cost": 1.0,
                              "val": {"a": 0.5, "b": 0.5, "c": 0.5}, "test": {"a": 0.5, "b": 0.6, "c": 0.7},
                              "network_steps": 125}}, f)
  with open(os.path.join(results, "tag.json"), "w") as f:
    # a and b help each other; c hurts and is hurt by both.
    json.dump({"tasks": list(TASKS), "affinity": [[0, 1.0, -1.0], [1.0, 0, -1.0], [-1.0, -1.0, 0]],
               "measurements": 12, "every_steps": 10, "network": "a+b+c", "network_steps": 125,
               "lookahead_network_steps": 40}, f)
  with open(os.path.join(workdir, "ensemble.json"), "w") as f:
    json.dump({"method": "optimal", "split": "test", "budgets": [
        {"budget": 2.0, "networks": ["a+b", "a+c"],
         "tasks": {"a": {"networks": ["a+b", "a+c"], "ensemble_loss": 0.5, "best_single_loss": 0.63}}}]}, f)
  return workdir


def test_report_sections_for_methods_tag_and_ensembles(method_workdir):
  text = open(report.write_report(method_workdir, budgets=[1, 2], random_samples=20)).read()
  test = _table(VAL_ROWS + [TRIPLE_ROW], 1.05)
  full = {tasks: row for row, tasks in enumerate(test.network_tasks) if test.costs[row] == 1.0}
  loss = lambda tasks, task: test.losses[full[tasks], TASKS.index(task)]
  # TAG: budget 1 only the triple serves every task; budget 2 a+b and c alone (full size: TAG's groups
  # are standard networks).
  tag_budget2 = loss(("a", "b"), "a") + loss(("a", "b"), "b") + loss(("c",), "c")
  assert f"| tag | {1.05 * 2.02:.3f} | {tag_budget2:.3f} |" in text
  assert "| mgda (all tasks) | 1.800 | 1.800 |" in text
  # Optimal at budget 2: a+b (serves a, b) and a+c (serves c); ensembling a's two networks gives 0.5.
  optimal = study.run(_table(VAL_ROWS + [TRIPLE_ROW]), test, budgets=[2.0], random_samples=5)
  optimal_total = optimal.solutions[0].test_loss
  assert f"| optimal + ensembling | - | {optimal_total - (loss(('a', 'b'), 'a') - 0.5):.3f} |" in text
  assert "## TAG inter-task affinity" in text and "## Ensembling" in text and "+20.6%" in text
  # Compute: 10 candidates x 125 steps; TAG: 125 + 40 + the one group it chose besides the all-task one.
  assert "| optimal | 10 | 1,250 |" in text and "| tag | 3.32 | 415 |" in text
  assert "| mgda (all tasks) | 1 | 125 |" in text


def test_report_without_method_files_has_no_method_sections(tmp_path):
  workdir = str(tmp_path / "plain")
  _write_run(workdir, VAL_ROWS + [TRIPLE_ROW])
  text = open(report.write_report(workdir, budgets=[1, 2], random_samples=20)).read()
  assert "| tag |" not in text and "mgda" not in text and "ensembling" not in text
  assert "| optimal |" in text and "| hoa |" in text and "| esa |" in text


def test_report_never_imports_jax_or_tensorflow():
  code = ("import sys, tg_jax.report, tg_jax.reporting.report, tg_jax.workdir, tg_jax.records; "
          "print([m for m in ('jax', 'tensorflow', 'flax') if m in sys.modules])")
  run = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert run.stdout.strip() == "[]", run.stdout + run.stderr


def test_independent_networks_count_at_their_nominal_size():
  # Measured costs sit a little off the nominal sizes; five 0.8018-SNT networks are the budget-4 row.
  rows = [((t,), cost, {t: loss}) for t in TASKS for cost, loss in ((0.8018, 1.0), (HALF, 2.0), (1.0, 0.5))]
  table = _table(rows)
  result = study.baselines_for(table, table, [2.4, 3.0], random_samples=5, seed=0)
  # 3 x 0.8018 = 2.405 SNT: the three 4/5-size networks at budget 2.4 (not the half-size ones, 6.0).
  assert [e.test_loss for e in result["independent"]] == [pytest.approx(3.0), pytest.approx(1.5)]


def test_a_chosen_network_that_serves_no_task_once_trained_leaves_the_solution():
  # Predictions make b's own network look best for b, so both a+b and b are chosen; trained, a+b is
  # better on b too, so b's network would be run for nothing.
  predicted = tables.ResultsTable.from_rows(("a", "b"), [(("a", "b"), 1.0, {"a": 0.5, "b": 0.9}),
                                                         (("b",), 1.0, {"b": 0.6})])
  converged = tables.ResultsTable.from_rows(("a", "b"), [(("a", "b"), 1.0, {"a": 0.5, "b": 0.4}),
                                                         (("b",), 1.0, {"b": 0.6})])
  selection = study.run(predicted, converged, budgets=[2.0], converged=converged, with_baselines=False)
  solution, = selection.solutions
  assert solution.networks == (study.ChosenNetwork(("a", "b"), 1.0),)
  assert solution.assignment == {"a": 0, "b": 0} and solution.cost == 1.0
  assert solution.unused == ("b @ 1 SNT",)
  assert "serves no task once trained: b @ 1 SNT" in study.format_text(selection)
  assert solution.test_loss == pytest.approx(0.9)


def _write_replicated_run(directory, rows, num_seeds=3, spread=0.02):
  """A converged run whose every network has ``num_seeds`` replicas around ``rows``' losses."""
  _write_run(directory, rows)
  rng = np.random.default_rng(0)
  for split, scale in (("val", 1.0), ("test", 1.05)):
    replica_rows = [(t, c, s, {k: v * scale * (1 + rng.normal(0, spread)) for k, v in l.items()})
                    for t, c, l in rows for s in range(num_seeds)]
    flat = tables.ResultsTable.from_rows(TASKS, [(t, c, l) for t, c, _, l in replica_rows])
    tables.write_csv(tables.Replicas.from_table(flat, [s for _, _, s, _ in replica_rows]),
                     os.path.join(directory, "results", f"{split}.csv"))


def test_report_with_seed_replicas_gives_intervals_and_says_what_is_robust(tmp_path):
  workdir = str(tmp_path / "seeds")
  _write_replicated_run(workdir, VAL_ROWS + [TRIPLE_ROW])
  text = open(report.write_report(workdir, budgets=[1, 2], random_samples=20)).read()
  assert "## What is robust" in text and "From 3 seeds per network" in text
  # Table 1 entries carry intervals; pairs help by 30-40% here, far beyond 2% noise: all resolved.
  assert "%* [" in text
  assert "- Table 1: 6 of 6 entries are resolved" in text
  table4 = next(line for line in text.splitlines() if line.startswith("| optimal |"))
  assert table4.count("[") == 2  # both budgets' totals with their interval
  assert "p > 0.5" in text and "Against all_task" in text
  with open(os.path.join(workdir, "study.json")) as f:
    assert len(json.load(f)["intervals"]["optimal"]) == 2


def test_report_with_one_seed_says_it_cannot_support_conclusions(tmp_path):
  workdir = str(tmp_path / "one_seed")
  _write_run(workdir, VAL_ROWS + [TRIPLE_ROW])
  text = open(report.write_report(workdir, budgets=[1, 2], random_samples=20)).read()
  assert "Every network was trained with one seed, so nothing here has an interval" in text
  assert "[" not in next(line for line in text.splitlines() if line.startswith("| optimal |"))


def test_wider_all_task_networks_are_the_all_task_baselines_at_larger_budgets():
  # All-task networks of 1.5 and 2 SNT (measured near nominal), better than any selection.
  wider = [(TASKS, 1.4961, {"a": 0.3, "b": 0.3, "c": 0.3}), (TASKS, 1.985, {"a": 0.2, "b": 0.2, "c": 0.2})]
  rows = VAL_ROWS + [TRIPLE_ROW] + INDEPENDENT_ROWS + wider
  assert analysis.selection_candidates(_table(rows)).num_networks == len(VAL_ROWS) + 1
  mgda = lambda cost, seed, total: {"method": "mgda", "tasks": list(TASKS), "cost": cost, "seed": seed,
                                    "test": dict.fromkeys(TASKS, total / 3)}
  methods = {"a+b+c:mgda": mgda(1.0, 0, 2.0), "a+b+c:mgda#1": mgda(1.0, 1, 2.2),
             "a+b+c@1.5:mgda": mgda(1.4961, 0, 1.5), "a+b+c@1.5:mgda#1": mgda(1.4961, 1, 1.7)}
  result = analysis.compare_methods(workdir_lib.StudyTables(val=_table(rows), test=_table(rows), methods=methods),
                                    budgets=[1.0, 1.5, 2.0, 2.5, 3.0], random_samples=20)
  triple = sum(TRIPLE_ROW[2].values())
  assert result.methods["all_task"] == pytest.approx([triple, 0.9, 0.6, 0.6, 0.6])
  assert result.methods["mgda (all tasks)"] == pytest.approx([2.1, 1.6, 1.6, 1.6, 1.6])
  # The selection never takes a wider network; independent networks are 1-SNT singles once three fit.
  assert all(n.cost <= 1.0 for run in result.runs.values() for s in run.solutions for n in s.networks)
  assert result.methods["independent"][-1] == pytest.approx(2.7)
  assert result.baselines["all_task"][2].networks[0].cost == pytest.approx(1.985)


def test_method_network_replicas_are_averaged_in_table_4():
  entry = lambda seed, total: {"method": "mgda", "tasks": list(TASKS), "size": 1.0, "cost": 1.0, "seed": seed,
                               "test": {"a": total / 3, "b": total / 3, "c": total / 3}}
  study_tables = workdir_lib.StudyTables(val=_table(VAL_ROWS + [TRIPLE_ROW]), test=_table(VAL_ROWS + [TRIPLE_ROW]),
                                         methods={"a+b+c:mgda": entry(0, 1.5), "a+b+c:mgda#1": entry(1, 2.1)})
  result = analysis.compare_methods(study_tables, budgets=[0.5, 1.0], random_samples=5)
  assert result.methods["mgda (all tasks)"] == [None, pytest.approx(1.8)]


@pytest.mark.parametrize("predict", ["surrogate", "tag"])
def test_selection_predict_names_any_predictor(method_workdir, predict):
  config = _load("pairs", "")
  config.tasks = TASKS
  config.selection.predict = predict
  finish.finish(config, method_workdir, train=FakeTrainer(), random_samples=20)
  with open(os.path.join(method_workdir, "selection.json")) as f:
    selection = json.load(f)
  assert selection["predict"] == predict and selection["method"] == predict
  assert selection["prediction_compute"]["trainings"] > 0


def test_every_method_s_grouping_gets_its_probability_of_being_optimal(tmp_path):
  workdir = str(tmp_path / "seeds")
  # Seed noise of 0.1%, far below the gaps between groupings: the optimum wins every resample.
  _write_replicated_run(workdir, VAL_ROWS + [TRIPLE_ROW], spread=0.001)
  with open(os.path.join(workdir, "results", "tag.json"), "w") as f:
    json.dump({"tasks": list(TASKS), "affinity": [[0, 1.0, -1.0], [1.0, 0, -1.0], [-1.0, -1.0, 0]],
               "measurements": 12, "every_steps": 10, "network": "a+b+c", "network_steps": 125}, f)
  budgets = [1.0, 1.5, 2.0, 2.5]
  comparison = analysis.compare_methods(workdir_lib.load_study(workdir_lib.Workdir(workdir)), budgets=budgets,
                                        random_samples=20, bootstrap=200)
  probabilities = comparison.probability_optimal
  optimal = comparison.runs["optimal"].solutions
  # The same resamples as the optimum's own uncertainty.
  assert probabilities["optimal"] == [s.uncertainty.probability_optimal for s in optimal] == [1.0] * 4
  for method in ("esa", "hoa", "surrogate", "tag"):
    same = [{n.key for n in s.networks} == {n.key for n in o.networks} for s, o in zip(comparison.runs[method].solutions, optimal)]
    assert probabilities[method] == [1.0 if s else 0.0 for s in same], method
  # TAG at budget 2 keeps c alone (a+b, c) where the optimum serves c from a+c.
  assert probabilities["tag"][2] == 0.0
  text = open(report.write_report(workdir, budgets=budgets, random_samples=20, comparison=comparison)).read()
  assert "Probability that each method's grouping is the optimum" in text
  assert "| tag | 1.00 | 1.00 | 0.00 |" in text
  with open(os.path.join(workdir, "study.json")) as f:
    assert json.load(f)["probability_optimal"]["tag"][2] == 0.0
  for method in ("optimal", "esa", "hoa", "surrogate", "tag"):
    assert os.path.getsize(os.path.join(workdir, "figures", report.figure5_name(method))) > 5000


def test_esa_refinement_drops_a_network_worse_than_predicted_and_trains_the_new_choice(tmp_path):
  workdir = str(tmp_path / "esa")
  _write_run(workdir, VAL_ROWS, schedule=dict(SCHEDULE, stop_step=25, eval_steps=[25]))
  config = _load("esa", "")
  config.tasks = TASKS
  config.selection.refine = 3
  # Trained, a+c is far worse on c (1.5) than c's half-size network (0.95), which early losses ranked below it.
  trainer = FakeTrainer(overrides={frozenset("ac"): {"a": 0.665, "c": 1.5}})
  finish.finish(config, workdir, train=trainer, random_samples=20)
  # The retraining phase trains ESA's choice; round 1 trains b+c, the choice at budget 2 once a+c is dropped.
  assert [sorted(derived.networks.extra) for derived, _ in trainer.calls] == [["a+b", "a+c", "c@0.5"], ["b+c"]]
  assert trainer.calls[1][1] == os.path.join(workdir, "refine", "round_1")
  study_tables = dataclasses.replace(workdir_lib.load_study(workdir_lib.Workdir(workdir)), refine=3)
  refined = analysis.refinement(study_tables)
  assert refined.stable and not refined.pending and len(refined.rounds) == 1
  first = refined.rounds[0]
  assert first.dropped[2.0] == ("a+c @ 1 SNT",) and "c@0.5" not in first.reasons
  assert "worse than predicted: c @ 0.4987 SNT" in first.reasons["a+c @ 1 SNT"]
  assert first.trained == ((("b", "c"), 1.0),)
  budget2 = refined.selection.solutions[refined.selection.budgets.index(2.0)]
  assert {n.tasks for n in budget2.networks} == {("a", "b"), ("b", "c")}
  # Test losses are 1.1 x the converged ones: a and b from a+b (0.57 each), c from b+c (0.76).
  assert budget2.test_loss == pytest.approx(1.1 * (0.57 + 0.57 + 0.76))
  text = open(os.path.join(workdir, "report.md")).read()
  assert "## ESA refinement" in text and "Stable" in text and "| 1 | 2: a+c @ 1 SNT" in text
  assert next(line for line in text.splitlines() if line.startswith("| esa_refined |")).split("|")[4].strip() == (
      f"{1.1 * (0.57 + 0.57 + 0.76):.3f}")
  assert "| esa_refined |" in text.split("## Training compute per method")[1]
  with open(os.path.join(workdir, "study.json")) as f:
    rounds = json.load(f)["refinement"]["rounds"]
  assert [(r["round"], r["trained"]) for r in rounds] == [(1, [{"tasks": ["b", "c"], "cost": 1.0}])]
  # Resumable: once stable, nothing is trained again.
  finish.finish(config, workdir, train=trainer, random_samples=20)
  assert len(trainer.calls) == 2


def test_methods_against_grouping_with_intervals_over_seeds(tmp_path):
  """Each all-task method network against the optimal grouping at its cost: better or worse where
  the 95% intervals over seeds are apart, unresolved where they overlap; the report's section and figure."""
  workdir = str(tmp_path / "stand_ins")
  _write_replicated_run(workdir, VAL_ROWS + [TRIPLE_ROW], spread=0.001)
  per_seed = {"pcgrad": (1.49, 1.50, 1.51), "mgda": (2.99, 3.00, 3.01), "mtan": (1.5, 2.1, 2.8),
              "soft": (1.0, 1.01, 1.02)}
  methods = {}
  for method, totals in per_seed.items():
    # MTAN sized to 1 SNT measures 0.985 (whole widths): it is still compared at budget 1.
    cost = {"soft": 3.0, "mtan": 0.985}.get(method, 1.0)
    for seed, total in enumerate(totals):
      methods[f"a+b+c:{method}" + (f"#{seed}" if seed else "")] = {
          "method": method, "tasks": list(TASKS), "size": 1.0, "cost": cost, "seed": seed,
          "test": {t: total / 3 for t in TASKS}}
  with open(os.path.join(workdir, "results", "methods.json"), "w") as f:
    json.dump(methods, f)
  study_tables = workdir_lib.load_study(workdir_lib.Workdir(workdir))
  comparison = analysis.compare_methods(study_tables, budgets=[1.0, 2.0, 3.0], random_samples=20, bootstrap=50)
  entries = {e.name: e for e in analysis.stand_ins(comparison, study_tables)}
  optimal = comparison.methods["optimal"]
  assert [e.name for e in analysis.stand_ins(comparison, study_tables)][0] == "soft (all tasks)"  # best first
  pcgrad, mgda, mtan, soft = (entries[f"{m} (all tasks)"] for m in ("pcgrad", "mgda", "mtan", "soft"))
  assert pcgrad.total == pytest.approx(1.5) and pcgrad.budget == 1.0 and pcgrad.optimal == optimal[0]
  assert pcgrad.equal == comparison.methods["all_task"][0]
  assert (pcgrad.verdict, mgda.verdict, mtan.verdict) == ("better", "worse", "not resolved")
  assert mgda.match_budget == 1.0 and pcgrad.match_budget is None
  assert soft.budget == 3.0 and soft.optimal == optimal[2]  # compared at its own cost
  assert mtan.budget == 1.0 and mtan.optimal == optimal[0]
  text = open(report.write_report(workdir, budgets=[1.0, 2.0, 3.0], random_samples=20, comparison=comparison)).read()
  section = text.split("## Methods against grouping", 1)[1]
  assert "| pcgrad | 1 | 1.500 [" in section and "| better |" in section
  assert "1 of 4 method networks are worse than the optimal grouping" in section
  assert os.path.exists(os.path.join(workdir, "figures", "methods_against_grouping.png"))
