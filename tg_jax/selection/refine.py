"""ESA's refinement loop (the caveat of the paper's section 6), numpy only.

ESA chooses networks on early validation losses. Once the chosen networks are trained to
convergence some turn out to serve no task (the other chosen networks are better at everything it
was chosen for) or to be worse than predicted (a network predicted to be no better on the tasks it
serves, and no costlier, is better once converged). Refinement drops those networks, at the budget
where they were chosen, and runs the selection again on the early table without them; networks the
new choice needs that have no converged results are trained (one round), and so on until no chosen
network is dropped (stable) or ``max_rounds`` rounds have run.

Every round is derived from the tables: ``replay`` re-runs the loop on the early table and the
converged networks available after each round (``available[k]``: after the retraining phase for
k = 0, after refinement round k's training for k >= 1). ``tg_jax.finish`` calls it, trains what a
round needs (``Refinement.pending``) in ``WORKDIR/refine/round_<k>``, and calls it again; the report
calls it on the same files and gets the same rounds.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from tg_jax.selection import study
from tg_jax.selection.selector import COST_TOLERANCE
from tg_jax.selection.tables import ResultsTable

# A network as the tables key it: (frozenset of its tasks, cost).
Key = tuple


@dataclasses.dataclass(frozen=True)
class Round:
  """One refinement round.

  Attributes:
    index: 1, 2, ...
    dropped: ``{budget: labels}`` of the networks dropped at each budget after the previous round's
      choice converged (budgets where nothing was dropped are left out).
    reasons: ``{label: why}`` for each dropped network.
    trained: ``(tasks, cost)`` of the networks the round's new choice needed that had no converged
      results (trained in ``WORKDIR/refine/round_<index>``).
  """

  index: int
  dropped: dict[float, tuple[str, ...]]
  reasons: dict[str, str]
  trained: tuple[tuple[tuple[str, ...], float], ...]

  @property
  def trainings(self) -> int:
    return len(self.trained)

  @property
  def snt_trainings(self) -> float:
    return float(sum(cost for _, cost in self.trained))

  def to_json(self) -> dict:
    return {"round": self.index, "dropped": [{"budget": b, "networks": list(n)} for b, n in self.dropped.items()],
            "reasons": dict(self.reasons), "trained": [{"tasks": list(t), "cost": c} for t, c in self.trained]}


@dataclasses.dataclass(frozen=True)
class Refinement:
  """The outcome of ``replay``.

  Attributes:
    selection: the refined selection (the last round's choice, scored on test where converged).
    rounds: the rounds run, the last possibly waiting for its training (``pending``).
    stable: whether the last choice dropped nothing.
    pending: ``(tasks, cost)`` the last round (or, before any round, ESA's own choice: the retraining
      phase's) needs trained before the loop can go on; empty when none.
  """

  selection: study.Selection
  rounds: tuple[Round, ...]
  stable: bool
  pending: tuple[tuple[tuple[str, ...], float], ...] = ()

  def to_json(self) -> dict:
    return {"stable": self.stable, "rounds": [r.to_json() for r in self.rounds],
            "pending": [{"tasks": list(t), "cost": c} for t, c in self.pending]}


def _select(early: ResultsTable, dropped: dict[float, set], converged: ResultsTable, test: Optional[ResultsTable],
            budgets: Sequence[float]) -> study.Selection:
  """ESA's selection per budget on ``early`` without that budget's dropped networks."""
  solutions = []
  for budget in budgets:
    rows = [r for r in range(early.num_networks) if early.network_key(r) not in dropped[budget]]
    run = study.run(early.subset(rows), test, budgets=[budget], converged=converged, with_baselines=False)
    solutions.append(run.solutions[0])
  return study.Selection(tasks=tuple(early.task_names), predict="none", budgets=tuple(budgets),
                         solutions=tuple(solutions), method="esa_refined")


def flagged(solution: study.Solution, early: ResultsTable, converged: ResultsTable,
            dropped: set) -> dict[Key, str]:
  """``{key: why}`` of the networks of a converged solution to drop at its budget.

  A network serving nothing once trained (``Solution.unused``) is dropped. A network serving tasks S
  is worse than predicted when another converged candidate (in ``early`` and not ``dropped``) that
  solves all of S at no greater cost was predicted no better on S (early losses summed over S) yet
  is better on S once converged.
  """
  if solution.infeasible or solution.untrained:
    return {}
  early_rows = {early.network_key(r): r for r in range(early.num_networks)}
  converged_rows = {converged.network_key(r): r for r in range(converged.num_networks)}
  by_label = {converged.network_label(r): key for key, r in converged_rows.items()}
  result = {by_label[label]: "serves no task once trained" for label in solution.unused}
  for index, network in enumerate(solution.networks):
    served = [early.task_names.index(t) for t in solution.served_by(index)]
    mine_early = float(np.sum(early.losses[early_rows[network.key], served]))
    mine = float(np.sum(converged.losses[converged_rows[network.key], served]))
    for key, row in converged_rows.items():
      if key == network.key or key in dropped or key not in early_rows:
        continue
      if converged.costs[row] > network.cost + COST_TOLERANCE or not np.all(np.isfinite(converged.losses[row, served])):
        continue
      theirs_early = float(np.sum(early.losses[early_rows[key], served]))
      theirs = float(np.sum(converged.losses[row, served]))
      if theirs_early >= mine_early and theirs < mine:
        result[network.key] = (f"worse than predicted: {converged.network_label(row)}, predicted no better on "
                               f"{', '.join(solution.served_by(index))}, is better once trained "
                               f"({theirs:.4f} < {mine:.4f})")
        break
  return result


def replay(early: ResultsTable, converged: ResultsTable, test: Optional[ResultsTable], budgets: Sequence[float],
           available: Sequence[frozenset], max_rounds: int) -> Refinement:
  """The refinement loop on the tables.

  Args:
    early: the ESA table of the selection candidates.
    converged, test: validation and test losses of every converged network (all rounds').
    budgets: the budgets.
    available: per round, the keys of the converged networks available after it (``available[0]``:
      after the retraining phase; ``available[k]``: after refinement round k trained).
    max_rounds: the most refinement rounds.
  """
  converged = converged.with_task_order(early.task_names, "converged table")
  test = None if test is None else test.aligned_to(converged)

  def tables_after(round_index: int) -> tuple[ResultsTable, Optional[ResultsTable]]:
    keys = available[round_index]
    rows = [r for r in range(converged.num_networks) if converged.network_key(r) in keys]
    return converged.subset(rows), None if test is None else test.subset(rows)

  dropped: dict[float, set] = {float(b): set() for b in budgets}
  val_now, test_now = tables_after(0)
  selection = _select(early, dropped, val_now, test_now, budgets)
  first = tuple(dict.fromkeys((n.tasks, n.cost) for s in selection.solutions for n in s.networks if not n.converged))
  if first:  # ESA's own choice is not trained yet: the retraining phase comes first
    return Refinement(selection, (), stable=False, pending=first)
  rounds: list[Round] = []
  for index in range(1, max_rounds + 1):
    new: dict[float, dict[Key, str]] = {}
    for solution in selection.solutions:
      flags = flagged(solution, early, val_now, dropped[solution.budget])
      if flags:
        new[solution.budget] = flags
    if not new:
      return Refinement(selection, tuple(rounds), stable=True)
    label = {val_now.network_key(r): val_now.network_label(r) for r in range(val_now.num_networks)}
    for budget, flags in new.items():
      dropped[budget] |= set(flags)
    labels = {budget: tuple(label[key] for key in flags) for budget, flags in new.items()}
    reasons = {label[key]: why for flags in new.values() for key, why in flags.items()}
    selection = _select(early, dropped, val_now, test_now, budgets)
    needed = tuple(dict.fromkeys((n.tasks, n.cost) for s in selection.solutions for n in s.networks
                                 if not n.converged))
    rounds.append(Round(index, labels, reasons, needed))
    if needed:
      if index >= len(available):
        return Refinement(selection, tuple(rounds), stable=False, pending=needed)
      val_now, test_now = tables_after(index)
      selection = _select(early, dropped, val_now, test_now, budgets)
  stable = not any(flagged(s, early, val_now, dropped[s.budget]) for s in selection.solutions)
  return Refinement(selection, tuple(rounds), stable=stable)
