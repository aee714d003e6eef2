"""Regret against training compute (tg_jax.reporting.regret, python -m tg_jax.regret) on small synthetic tables."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tg_jax import workdir as workdir_lib
from tg_jax.reporting import analysis, regret, report
from tg_jax.selection import study, synthetic, tables

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGETS = [1.0, 1.5, 2.0, 3.0]


def _tables(num_tasks=4, seed=8):
  val = synthetic.random_table(num_tasks, seed=seed)
  rng = np.random.default_rng(1)
  test = tables.ResultsTable(val.task_names, val.network_tasks, val.costs,
                             val.losses * rng.uniform(0.97, 1.03, val.losses.shape))
  esa = tables.ResultsTable(val.task_names, val.network_tasks, val.costs,
                            val.losses * rng.uniform(1.2, 1.6, val.losses.shape))
  return val, test, esa


def _measured(val, test, esa, samples=(0.0, 0.5)):
  study_tables = workdir_lib.StudyTables(val=val, test=test, esa=esa)
  runs = analysis.selections(study_tables, BUDGETS, bootstrap=0)
  comparison = analysis.Comparison(BUDGETS, {}, runs)
  return regret.measure(study_tables, comparison, surrogate_samples=samples), runs


def test_regret_is_each_choice_minus_optimal_with_its_compute():
  val, test, esa = _tables()
  measured, runs = _measured(val, test, esa)
  optimal = [s.test_loss for s in runs["optimal"].solutions]
  assert measured.optimal == pytest.approx(optimal)
  rows = {m.method: m for m in measured.methods}
  # The adaptive loop at 20% of 19 trainings could not even train the 4 singles it starts from.
  assert set(rows) == {"esa", "hoa", "surrogate 0%", "surrogate 50%", "adaptive 35%", "adaptive 50%"}
  for share in (0.35, 0.5):
    loop = rows[regret.adaptive_name(share)]
    assert 4 <= loop.compute.trainings <= share * 19 and len(loop.regrets) == len(BUDGETS)
    assert all(r is not None for r in loop.regrets)  # it chooses among networks it trained to convergence
  hoa = rows["hoa"]
  assert hoa.regrets == pytest.approx([s.test_loss - o for s, o in zip(runs["hoa"].solutions, optimal)])
  assert all(r >= -1e-12 for r in hoa.regrets)  # Optimal is the best on validation, and test here is close
  # HOA trains 4 half-size singles, 4 singles and 6 pairs, then the groups of 3+ it chose.
  chosen = {n.key for s in runs["hoa"].solutions for n in s.networks if len(n.tasks) >= 3}
  assert hoa.compute.trainings == 14 + len(chosen)
  assert measured.exhaustive.trainings == 4 + 15 and hoa.share_of_exhaustive == pytest.approx(hoa.compute.trainings / 19)
  # ESA: every candidate for a fifth of a training (the paper's fraction), then its chosen networks.
  esa_chosen = {n.key for s in runs["esa"].solutions for n in s.networks}
  assert rows["esa"].compute.trainings == pytest.approx(19 * 0.2 + len(esa_chosen))
  # The surrogate on singles and pairs alone is HOA.
  assert rows["surrogate 0%"].regrets == pytest.approx(hoa.regrets)
  assert hoa.mean_relative_regret == pytest.approx(np.mean([r / o for r, o in zip(hoa.regrets, optimal)]))
  value = json.loads(json.dumps(measured.to_json()))
  assert value["methods"][0]["method"] == measured.methods[0].method and value["budgets"] == BUDGETS


def test_no_regret_without_every_subset():
  val, test, esa = _tables()
  rows = [r for r, t in enumerate(val.network_tasks) if len(t) <= 2]
  measured, _ = _measured(val.subset(rows), test.subset(rows), esa.subset(rows))
  assert measured is None


def test_figure_and_table_are_written(tmp_path):
  measured, _ = _measured(*_tables())
  regret.figure(measured, str(tmp_path / "regret.png"))
  assert os.path.getsize(tmp_path / "regret.png") > 5000
  lines = regret.text_lines(measured)
  assert any(line.startswith("| optimal | 19 | 100% |") for line in lines)
  assert any(line.startswith("| hoa |") for line in lines)


def test_report_has_the_regret_section(tmp_path):
  val, test, esa = _tables()
  for name, table in (("val", val), ("test", test), ("esa", esa)):
    tables.write_csv(table, str(tmp_path / "results" / f"{name}.csv"))
  text = open(report.write_report(str(tmp_path), budgets=BUDGETS, random_samples=20)).read()
  assert "## Regret against training compute" in text and "| surrogate 25% |" in text
  assert os.path.getsize(tmp_path / "figures" / "regret_vs_compute.png") > 5000
  saved = json.load(open(tmp_path / "study.json"))["regret"]
  assert saved["budgets"] == BUDGETS and {m["method"] for m in saved["methods"]} >= {"hoa", "esa", "surrogate 25%"}


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "tg_jax.regret", *args], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=120)


def test_regret_command_on_tables_alone(tmp_path):
  val, test, esa = _tables(3, seed=2)
  for name, table in (("val", val), ("test", test), ("esa", esa)):
    tables.write_csv(table, str(tmp_path / f"{name}.csv"))
  out = tmp_path / "out"
  run = _cli(f"--results={tmp_path / 'val.csv'}", f"--test_results={tmp_path / 'test.csv'}",
             f"--esa_results={tmp_path / 'esa.csv'}", f"--out={out}", "--esa_fraction=0.25")
  assert run.returncode == 0, run.stderr
  assert "| hoa |" in run.stdout and "| esa |" in run.stdout
  saved = json.load(open(out / "regret.json"))
  expected = study.run(val, test, budgets=saved["budgets"], random_samples=5)
  assert saved["optimal"] == pytest.approx([s.test_loss for s in expected.solutions])
  assert (out / "regret.md").read_text().startswith("# Regret against training compute")
  assert os.path.getsize(out / "regret_vs_compute.png") > 5000
  rows = [r for r, t in enumerate(val.network_tasks) if len(t) <= 2]
  tables.write_csv(val.subset(rows), str(tmp_path / "pairs_val.csv"))
  tables.write_csv(test.subset(rows), str(tmp_path / "pairs_test.csv"))
  run = _cli(f"--results={tmp_path / 'pairs_val.csv'}", f"--test_results={tmp_path / 'pairs_test.csv'}", f"--out={out}")
  assert run.returncode == 2 and "every group of tasks" in run.stderr and "Traceback" not in run.stderr


def test_regret_never_imports_jax_or_tensorflow():
  code = ("import sys, tg_jax.regret, tg_jax.reporting.regret, tg_jax.selection.predictors; "
          "print([m for m in ('jax', 'tensorflow', 'flax') if m in sys.modules])")
  run = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert run.stdout.strip() == "[]", run.stdout + run.stderr
