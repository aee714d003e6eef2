"""Helper tasks: trained as extra outputs, measured in the tables, never served (numpy side)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tg_jax import workdir as workdir_lib
from tg_jax.reporting import analysis, report
from tg_jax.reporting import helper_tasks as helper_lib
from tg_jax.selection import hoa, selector, study, synthetic, tables

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Served tasks a and b, helper h. At budget 2 the optimum pairs a with h: a+h (a 0.5) and b (1.0),
# 1.5 in all, beats a and b alone (2.0) and the all-task network (2.2).
ROWS = [(("a",), 1.0, {"a": 1.0}), (("b",), 1.0, {"b": 1.0}), (("a", "b"), 1.0, {"a": 1.1, "b": 1.1}),
        (("a",), 0.5, {"a": 1.2}), (("b",), 0.5, {"b": 1.2}), (("h",), 1.0, {"h": 0.3}),
        (("a", "h"), 1.0, {"a": 0.5, "h": 9.0}), (("b", "h"), 1.0, {"b": 1.2, "h": 0.01})]


def _full_table(helper_scale: float = 1.0) -> tables.ResultsTable:
  """The table as training writes it: a column for every task, helpers included."""
  rows = [(tasks, cost, {t: v * (helper_scale if t == "h" else 1.0) for t, v in losses.items()})
          for tasks, cost, losses in ROWS]
  return tables.ResultsTable.from_rows(("a", "b", "h"), rows)


def test_with_helpers_drops_their_columns_and_networks_but_keeps_identities():
  full = _full_table()
  served = full.with_helpers(["h"])
  assert served.task_names == ("a", "b") and served.helper_tasks == ("h",)
  # The helper's own network serves nothing and leaves; a+h keeps its name and key, solving a only.
  assert ("h",) not in served.network_tasks and served.num_networks == full.num_networks - 1
  row = served.network_tasks.index(("a", "h"))
  assert served.network_key(row) == tables.network_key(("a", "h"), 1.0)
  assert served.network_label(row) == "a+h @ 1 SNT" and served.helpers_of(row) == ("h",)
  assert served.losses[row].tolist() == [0.5, np.inf]
  assert served.helped_rows() == [row, served.network_tasks.index(("b", "h"))]
  assert served.without_helper_networks().network_tasks == (("a",), ("b",), ("a", "b"), ("a",), ("b",))
  # Subsets, joins and reordering keep the helpers.
  assert served.subset(served.helped_rows()).helper_tasks == ("h",)
  assert served.with_task_order(("b", "a")).helper_tasks == ("h",)


def test_helper_table_errors_name_the_problem():
  with pytest.raises(tables.TableError, match="every task of the table"):
    _full_table().with_helpers(["a", "b", "h"])
  with pytest.raises(tables.TableError, match=r"helper task\(s\) \['a'\] also have a column"):
    tables.ResultsTable(("a",), (("a",),), np.ones(1), np.ones((1, 1)), helper_tasks=("a",))
  with pytest.raises(tables.TableError, match="unknown task"):
    tables.ResultsTable(("a",), (("a", "g"),), np.ones(1), np.ones((1, 1)), helper_tasks=("h",))


def test_csv_with_helper_columns_and_seed_replicas():
  full = _full_table()
  replicas = tables.Replicas.from_table(full.concat(_full_table(2.0)), seeds=[0] * 8 + [1] * 8)
  read = tables.parse_replicas(tables.to_csv(replicas))
  served = read.with_helpers(("h",))
  assert served.table.task_names == ("a", "b") and served.samples.shape == (7, 2, 2)
  row = served.table.network_tasks.index(("b", "h"))
  assert served.seeds[row] == (0, 1) and served.samples[row, :, 1].tolist() == [1.2, 1.2]
  assert tables.parse_csv(tables.to_csv(full)).with_helpers(["h"]).num_networks == 7


def test_selector_never_serves_a_helper_and_picks_a_network_for_its_help():
  served = _full_table().with_helpers(["h"])
  result = study.run(served, served, budgets=[1.0, 1.5, 2.0], random_samples=20)
  assert result.tasks == ("a", "b")
  one, one_and_half, two = result.solutions
  assert [n.label for n in one.networks] == ["a+b @ 1 SNT"]
  assert sorted(n.label for n in one_and_half.networks) == ["a+h @ 1 SNT", "b @ 0.5 SNT"]
  assert sorted(n.label for n in two.networks) == ["a+h @ 1 SNT", "b @ 1 SNT"]
  for solution in result.solutions:
    assert set(solution.assignment) == {"a", "b"}
  assert two.val_loss == pytest.approx(1.5) and two.test_loss == pytest.approx(1.5)
  assert two.networks[two.assignment["a"]].tasks == ("a", "h")
  # Were h served, the selection would have to serve it too, by b+h instead of b.
  served_h = study.run(_full_table(), budgets=[2.0], with_baselines=False).solutions[0]
  assert served_h.assignment["h"] == served_h.assignment["b"] and served_h.val_loss == pytest.approx(1.71)


def test_helper_losses_never_enter_the_objective():
  budgets = [1.0, 1.5, 2.0, 3.0]
  choose = lambda table: [s.networks for s in selector.select_many(table.with_helpers(["h"]), budgets)]
  assert choose(_full_table()) == choose(_full_table(helper_scale=1000.0)) == choose(_full_table(1e-3))


def test_baselines_hoa_and_intervals_on_a_table_with_helpers():
  served = _full_table().with_helpers(["h"])
  # The all-task baseline is the network of the served tasks alone, never one with a helper.
  with_all = tables.ResultsTable.from_rows(("a", "b", "h"), ROWS + [(("a", "b", "h"), 1.0, {"a": 0.1, "b": 0.1, "h": 1})])
  with_all = with_all.with_helpers(["h"])
  entry = study.baselines_for(with_all, with_all, [1.0], random_samples=10, seed=0)["all_task"][0]
  assert [n.label for n in entry.networks] == ["a+b @ 1 SNT"]
  # HOA predicts from the pairs of served tasks; networks with a helper are no pairs of them.
  assert hoa.pair_losses(served)[0, 1] == hoa.pair_losses(served)[1, 0] == 1.1
  three = _helper_study(5, np.full(3, 0.5)).with_helpers(["h"])
  predicted = study.run(three, three, predict="hoa", budgets=[2.0], random_samples=10)
  assert all("h" not in n.tasks for n in predicted.solutions[0].networks)
  assert any("h" in n.tasks for n in study.run(three, budgets=[2.0], with_baselines=False).solutions[0].networks)
  # Seed replicas: the bootstrap re-runs the selection with the helper networks among its candidates.
  noisy = _full_table().concat(tables.ResultsTable.from_rows(
      ("a", "b", "h"), [(t, c, {k: v * 1.05 for k, v in l.items()}) for t, c, l in ROWS]))
  replicas = tables.Replicas.from_table(noisy, seeds=[0] * 8 + [1] * 8).with_helpers(["h"])
  result = study.run(replicas.table, replicas.table, budgets=[2.0], random_samples=10,
                     replicas=(replicas, replicas), bootstrap=50)
  assessed = result.solutions[0].uncertainty
  assert assessed.probability_optimal == pytest.approx(1.0)
  assert sorted(n.label for n in result.solutions[0].networks) == ["a+h @ 1 SNT", "b @ 1 SNT"]


def _helper_study(seed: int, helper_effect: np.ndarray) -> tables.ResultsTable:
  """A three-task synthetic study plus helper h: every served task alone, in pairs, and with h."""
  served = synthetic.random_table(3, seed=seed)
  names = served.task_names
  rows = [(served.network_tasks[r], float(served.costs[r]),
           {t: float(served.losses[r, j]) for j, t in enumerate(names) if np.isfinite(served.losses[r, j])})
          for r in range(served.num_networks)]
  full_single = {t: served.losses[[r for r in range(served.num_networks) if served.network_tasks[r] == (t,)
                                   and served.costs[r] == 1.0][0], j] for j, t in enumerate(names)}
  rows += [((t, "h"), 1.0, {t: float(full_single[t] * (1 - helper_effect[j])), "h": 0.2})
           for j, t in enumerate(names)]
  return tables.ResultsTable.from_rows(names + ("h",), rows)


def test_gains_against_single_task_networks_with_intervals():
  effects = [np.array([0.2, -0.1, 0.0]), np.array([0.3, -0.1, 0.02])]
  seeds = [_helper_study(5, e) for e in effects]
  replicas = tables.Replicas.from_table(seeds[0].concat(seeds[1]), seeds=[0] * seeds[0].num_networks
                                        + [1] * seeds[1].num_networks).with_helpers(["h"])
  measured = helper_lib.gains(replicas.table, replicas.table, replicas)
  assert measured.tasks == ("task0", "task1", "task2") and measured.helpers == ("h",)
  np.testing.assert_allclose(measured.pair_gain[:, 0], np.mean(effects, axis=0), rtol=1e-9)
  # One helper, one network with it per task: the best is the pair.
  np.testing.assert_allclose(measured.best_gain, measured.pair_gain[:, 0])
  assert measured.best == ("task0+h @ 1 SNT", "task1+h @ 1 SNT", "task2+h @ 1 SNT")
  low, high = measured.best_intervals
  assert measured.replicates == 2 and low[1] == pytest.approx(-0.1) == high[1]  # the same gain in both seeds
  assert low[0] < 0.25 < high[0]
  assert helper_lib.gains(replicas.table.without_helper_networks(), replicas.table.without_helper_networks()) is None


def test_report_has_a_helper_section_with_its_figure(tmp_path):
  full = _helper_study(7, np.array([0.25, 0.1, -0.05]))
  early = tables.ResultsTable(full.task_names, full.network_tasks, full.costs, full.losses * 1.2)
  for split, table in (("val", full), ("test", full), ("esa", early)):
    tables.write_csv(table, str(tmp_path / "results" / f"{split}.csv"))
  workdir_lib.write_json(str(tmp_path / "config.json"), {"selection": {"helper_tasks": ["h"]}})
  study_tables = workdir_lib.load_study(workdir_lib.Workdir(str(tmp_path)))
  assert study_tables.helper_tasks == ("h",) and study_tables.task_names == ("task0", "task1", "task2")
  path = report.write_report(str(tmp_path), budgets=[1.0, 2.0, 3.0], random_samples=20)
  text = open(path).read()
  assert "## Helper tasks" in text and "Helper tasks (trained, never served): h." in text
  assert "| task0 | " in text and "+25.0%" in text and "+10.0%" in text and "-5.0%" in text
  assert os.path.exists(tmp_path / "figures" / "helper_tasks.png")
  written = json.loads((tmp_path / "study.json").read_text())["helper_tasks"]
  assert written["best_gain"] == pytest.approx([0.25, 0.1, -0.05])
  # task0's pair with h is its best network: the selection takes it where it fits.
  comparison = analysis.compare_methods(study_tables, [1.0, 2.0, 3.0], random_samples=20, bootstrap=0)
  chosen = helper_lib.chosen_with_helpers(comparison.runs, ("h",))
  assert any("task0+h @ 1 SNT (serves task0)" in labels for _, labels in chosen["optimal"])
  # ESA selects on early losses among the same candidates, helper networks included.
  assert chosen["esa"] == chosen["optimal"]
  assert "Networks with a helper that a selection chose:" in text


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "tg_jax.select", *args], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=120)


def test_select_command_takes_helpers_from_the_flag_or_the_workdir(tmp_path):
  for split in ("val", "test"):
    tables.write_csv(_full_table(), str(tmp_path / "results" / f"{split}.csv"))
  workdir_lib.write_json(str(tmp_path / "config.json"), {"selection": {"helper_tasks": ["h"]}})
  val, test = tmp_path / "results" / "val.csv", tmp_path / "results" / "test.csv"
  common = (f"--results={val}", f"--test_results={test}", "--budgets=2", "--random_samples=10", "--bootstrap=0")
  from_workdir = _cli(*common)
  assert from_workdir.returncode == 0, from_workdir.stderr
  assert "helper tasks (trained, never served): h" in from_workdir.stdout
  assert "a+h @ 1 SNT  serves a" in from_workdir.stdout and "Network selection for tasks a, b" in from_workdir.stdout
  served = _cli(*common, "--helper_tasks=")
  assert served.returncode == 0 and "Network selection for tasks a, b, h" in served.stdout
  unknown = _cli(*common, "--helper_tasks=edges")
  assert unknown.returncode != 0 and "--helper_tasks names edges, not a task of" in unknown.stderr


def test_regret_command_takes_helper_tasks(tmp_path):
  full = _helper_study(3, np.array([0.3, 0.0, -0.1]))
  early = tables.ResultsTable(full.task_names, full.network_tasks, full.costs, full.losses * 1.3)
  for name, table in (("val", full), ("test", full), ("esa", early)):
    tables.write_csv(table, str(tmp_path / f"{name}.csv"))
  run = subprocess.run([sys.executable, "-m", "tg_jax.regret", f"--results={tmp_path / 'val.csv'}",
                        f"--test_results={tmp_path / 'test.csv'}", f"--esa_results={tmp_path / 'esa.csv'}",
                        "--helper_tasks=h", "--budgets=1,2", f"--out={tmp_path / 'regret'}"],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr
  written = json.loads((tmp_path / "regret" / "regret.json").read_text())
  assert written["budgets"] == [1.0, 2.0]
