"""Selection for a list of budgets, scored on test and set against the baselines.

``run`` is what ``python -m tg_jax.select`` and the trainer's ``main`` call; its result is a plain
JSON-able dict, ``format_text`` its human-readable form.

Tables in play:
- ``val``: validation losses of trained networks (what selection uses when nothing is predicted);
- ``predict="hoa"``: selection runs on the Higher Order Approximation built from ``val``'s pairs;
- ``converged``: validation losses of fully trained networks, used to assign each task to a chosen
  network when the selection table holds predictions (ESA tables, HOA); defaults to ``val``;
- ``test``: test losses of the same networks as ``converged``; each solution's test total sums the
  test losses of the networks serving each task.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from tg_jax.selection import baselines, hoa, selector
from tg_jax.selection.tables import ResultsTable, TableError

PREDICTIONS = ("none", "hoa")


def default_budgets(table: ResultsTable) -> list[float]:
  """1 to the number of tasks in steps of 0.5 SNT, as in the paper."""
  return [float(b) for b in np.arange(1.0, table.num_tasks + 0.25, 0.5)]


def _rows_by_key(table: Optional[ResultsTable]) -> dict:
  if table is None:
    return {}
  return {table.network_key(row): row for row in range(table.num_networks)}


def _network_json(table: ResultsTable, row: int) -> dict:
  return {"tasks": list(table.network_tasks[row]), "cost": float(table.costs[row])}


def _baseline_json(table: ResultsTable, scored: Optional[baselines.Scored], budget: float) -> Optional[dict]:
  if scored is None:
    return None
  return {"budget": budget, "networks": [_network_json(table, r) for r in scored.networks],
          "val_loss": scored.val_loss, "test_loss": scored.test_loss, "cost": scored.cost}


def run(val: ResultsTable, test: Optional[ResultsTable] = None, predict: str = "none",
        budgets: Optional[Sequence[float]] = None, objective: Optional[selector.Objective] = None,
        converged: Optional[ResultsTable] = None, random_samples: int = 1000, seed: int = 0,
        with_baselines: bool = True) -> dict:
  """Selects networks for every budget and scores them and the baselines; returns a JSON-able dict.

  A budget within which no set of networks serves every task gets a solution with no networks and
  an ``infeasible`` message naming the cheapest set that would. ``with_baselines=False`` leaves the
  baselines out (a study comparing several methods on one set of networks computes them once,
  with ``baselines``).
  """
  if predict not in PREDICTIONS:
    raise ValueError(f"unknown prediction {predict!r}; choose one of {', '.join(PREDICTIONS)}")
  converged = val if converged is None else converged
  if converged.task_names != val.task_names:
    raise TableError(f"the converged table's tasks {list(converged.task_names)} differ from the selection "
                     f"table's {list(val.task_names)}")
  if test is not None:
    test = test.aligned_to(converged)
  budgets = default_budgets(val) if budgets is None else [float(b) for b in budgets]
  table = hoa.predict(val) if predict == "hoa" else val
  converged_rows = _rows_by_key(converged)

  solutions = []
  for budget, solution in zip(budgets, selector.select_many(table, budgets, objective, infeasible="explain")):
    if isinstance(solution, selector.NoFeasibleSolution):
      solutions.append({"budget": budget, "networks": [], "assignment": {}, "val_loss": None, "test_loss": None,
                        "infeasible": str(solution)})
      continue
    keys = [table.network_key(r) for r in solution.networks]
    measured = all(key in converged_rows for key in keys)
    unused = []
    if measured:
      # The chosen networks exist fully trained: serve each task by its best one on validation. A
      # network that then serves no task is not run at inference: it leaves the solution.
      chosen = [converged_rows[key] for key in keys]
      assignment = selector.assign(converged.losses, chosen)
      ordered = [row for row in chosen if row in set(assignment)]
      unused = [converged.network_label(row) for row in chosen if row not in set(assignment)]
      val_loss = float(np.sum(converged.losses[list(assignment), np.arange(val.num_tasks)]))
    else:
      ordered = list(solution.networks)
      assignment = solution.assignment
      val_loss = solution.loss
    index_of = {row: i for i, row in enumerate(ordered)}
    source = converged if measured else table
    test_loss = None
    if test is not None and measured:
      test_loss = float(np.sum(test.losses[list(assignment), np.arange(val.num_tasks)]))
    solutions.append({
        "budget": solution.budget,
        "networks": [dict(_network_json(source, r), converged=source.network_key(r) in converged_rows)
                     for r in ordered],
        "assignment": {task: index_of[row] for task, row in zip(val.task_names, assignment)},
        "val_loss": val_loss,
        "test_loss": test_loss,
        "objective": solution.objective,
        "predicted_val_loss": solution.loss if table is not converged else None,
        "untrained": [] if measured else [table.network_label(r) for r, key in zip(solution.networks, keys)
                                          if key not in converged_rows],
        # Chosen on predictions, but on converged validation losses every task is better served by
        # another chosen network.
        "unused": unused,
        "cost": float(sum(source.costs[r] for r in ordered)),
    })

  result = {"tasks": list(val.task_names), "predict": predict, "budgets": budgets, "solutions": solutions}
  if with_baselines:
    result["baselines"] = baselines_for(converged, test, budgets, random_samples, seed)
  if predict == "hoa":
    accuracy = hoa.accuracy(converged)
    result["hoa_accuracy"] = None if accuracy is None else dataclasses.asdict(accuracy)
  return result


def baselines_for(val: ResultsTable, test: Optional[ResultsTable], budgets: Sequence[float], random_samples: int,
                  seed: int, independent: Optional[tuple[ResultsTable, Optional[ResultsTable]]] = None) -> dict:
  """The baselines of paper section 4.3 at each budget, drawn from ``val``'s networks.

  ``independent``: ``(val, test)`` tables the independent baseline draws from instead, when it has
  single-task networks of sizes that are not selection candidates (the paper's 1/5 to 4/5 SNT).
  """
  independent_val, independent_test = (val, test) if independent is None else independent
  all_task, independent_entries, random, pessimal = [], [], [], []
  for budget in budgets:
    all_task.append(_baseline_json(val, baselines.all_task_network(val, test, budget), budget))
    independent_entries.append(_baseline_json(
        independent_val, baselines.independent_networks(independent_val, independent_test, budget), budget))
    sampled = baselines.random_solutions(val, test, budget, samples=random_samples, seed=seed)
    random.append({"budget": budget, "val_loss": sampled.val_loss, "test_loss": sampled.test_loss,
                   "samples": sampled.samples})
    worst = baselines.pessimal_solution(val, test, budget)
    entry = _baseline_json(val, worst.scored, budget)
    if entry is not None:
      entry["exact"] = worst.exact
    pessimal.append(entry)
  return {"all_task": all_task, "independent": independent_entries, "random": random, "pessimal": pessimal}


def _number(value: Optional[float]) -> str:
  return "-" if value is None else f"{value:.4f}"


def format_text(result: dict) -> str:
  """The per-budget report: chosen networks, which tasks each serves, totals, baselines."""
  lines = []
  predicted = " (networks chosen from HOA predictions)" if result["predict"] == "hoa" else ""
  lines.append(f"Network selection for tasks {', '.join(result['tasks'])}{predicted}")
  for solution in result["solutions"]:
    lines.append("")
    if solution.get("infeasible"):
      lines.append(f"budget {solution['budget']:g} SNT: infeasible: {solution['infeasible']}")
      continue
    lines.append(f"budget {solution['budget']:g} SNT: {len(solution['networks'])} network(s), cost "
                 f"{solution['cost']:g}, val {_number(solution['val_loss'])}, test {_number(solution['test_loss'])}")
    served: dict = {}
    for task, index in solution["assignment"].items():
      served.setdefault(index, []).append(task)
    for index, network in enumerate(solution["networks"]):
      tasks = "+".join(network["tasks"])
      serves = ", ".join(served.get(index, [])) or "nothing"
      lines.append(f"  [{index}] {tasks} @ {network['cost']:g} SNT  serves {serves}")
    if solution["untrained"]:
      lines.append(f"  not trained yet (no test loss): {', '.join(solution['untrained'])}")
    if solution.get("unused"):
      lines.append(f"  chosen on predictions but left out, as it serves no task once trained: "
                   f"{', '.join(solution['unused'])}")
  lines.append("")
  lines.append("Total loss by budget (validation / test):")
  header = ["method"] + [f"{b:g}" for b in result["budgets"]]
  rows = [["selected"] + [f"{_number(s['val_loss'])}/{_number(s['test_loss'])}" for s in result["solutions"]]]
  for name, entries in (result.get("baselines") or {}).items():
    rows.append([name] + [f"{_number(e['val_loss'])}/{_number(e['test_loss'])}" if e and e["val_loss"] is not None
                          else "-" for e in entries])
  widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
  for row in [header] + rows:
    lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
  accuracy = result.get("hoa_accuracy")
  if accuracy:
    lines.append("")
    lines.append(f"HOA accuracy on the {accuracy['count']} measured higher-order losses: average max-ratio error "
                 f"{100 * accuracy['max_ratio_error']:.1f}%, average overestimate "
                 f"{100 * accuracy['overestimate']:.1f}% (paper: 5.2% and 1.4%)")
  return "\n".join(lines)
