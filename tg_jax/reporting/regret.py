"""Regret against training compute: how much training each method needs to find a good grouping.

For every method that chooses networks from less than exhaustive training (ESA, every predictor of
``tg_jax.selection.predictors``, the surrogate at several shares of the groups of 3+ tasks, and the
adaptive loop of ``tg_jax.selection.adaptive`` at several budgets, replayed on the tables), on a
study whose every candidate network converged (so that Optimal is known and every choice can be
scored on test): the regret at each budget, its choice's total test loss minus Optimal's, against the
training it needed (``analysis.compute_per_method``: what it trains to predict, then its chosen
networks over all budgets). Lower-left is better: little regret for little compute.

Runs on a workdir's tables (``measure``, in the report) or on tables alone (``python -m tg_jax.regret``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from tg_jax.reporting import analysis  # noqa: E402
from tg_jax.selection import adaptive, study  # noqa: E402
from tg_jax.selection.tables import has_size  # noqa: E402
from tg_jax.workdir import StudyTables  # noqa: E402

# Shares of the trained groups of 3+ tasks the surrogate is fitted on, one point each (0: singles and
# pairs alone, where it predicts what HOA does).
SURROGATE_SAMPLES = (0.0, 0.1, 0.25, 0.5)
# Budgets of the adaptive loop (selection/adaptive.py), as shares of exhaustive training, one point each.
ADAPTIVE_SHARES = (0.2, 0.35, 0.5)
# The goal the regret is read against: within 1% mean regret at 20% or less of exhaustive compute.
GOAL_REGRET = 0.01
GOAL_COMPUTE_SHARE = 0.2


def surrogate_name(sample: float) -> str:
  return f"surrogate {100 * sample:.0f}%"


@dataclasses.dataclass(frozen=True)
class MethodRegret:
  """One method's regret per budget and its compute.

  Attributes:
    method: its name.
    compute: the training it needed.
    share_of_exhaustive: that compute over Optimal's (every candidate trained to convergence).
    regrets: per budget, its total test loss minus Optimal's (None: no answer there, or a chosen
      network without converged results).
    relative_regrets: the same over Optimal's total.
  """

  method: str
  compute: analysis.Compute
  share_of_exhaustive: float
  regrets: tuple[Optional[float], ...]
  relative_regrets: tuple[Optional[float], ...]

  @property
  def mean_regret(self) -> Optional[float]:
    known = [r for r in self.regrets if r is not None]
    return float(np.mean(known)) if known and len(known) == len(self.regrets) else None

  @property
  def mean_relative_regret(self) -> Optional[float]:
    known = [r for r in self.relative_regrets if r is not None]
    return float(np.mean(known)) if known and len(known) == len(self.relative_regrets) else None

  def to_json(self) -> dict[str, Any]:
    return {"method": self.method, "trainings": self.compute.trainings, "network_steps": self.compute.network_steps,
            "counted": self.compute.counted, "share_of_exhaustive": self.share_of_exhaustive,
            "regrets": list(self.regrets), "relative_regrets": list(self.relative_regrets),
            "mean_regret": self.mean_regret, "mean_relative_regret": self.mean_relative_regret}


@dataclasses.dataclass(frozen=True)
class Regret:
  """Every method's regret against Optimal's test totals (``optimal``, per budget) at ``budgets``."""

  budgets: tuple[float, ...]
  optimal: tuple[float, ...]
  exhaustive: analysis.Compute
  methods: tuple[MethodRegret, ...]

  def to_json(self) -> dict[str, Any]:
    return {"budgets": list(self.budgets), "optimal": list(self.optimal),
            "exhaustive": {"trainings": self.exhaustive.trainings, "network_steps": self.exhaustive.network_steps},
            "methods": [m.to_json() for m in self.methods],
            "goal": {"mean_relative_regret": GOAL_REGRET, "share_of_exhaustive": GOAL_COMPUTE_SHARE}}

  def meeting_goal(self) -> list[str]:
    """Methods within ``GOAL_REGRET`` mean relative regret at ``GOAL_COMPUTE_SHARE`` of exhaustive compute or less."""
    return [m.method for m in self.methods if m.mean_relative_regret is not None
            and m.mean_relative_regret <= GOAL_REGRET and m.share_of_exhaustive <= GOAL_COMPUTE_SHARE]


def _surrogate_runs(study_tables: StudyTables, budgets: Sequence[float],
                    samples: Sequence[float]) -> dict[str, study.Selection]:
  val, test = study_tables.val, study_tables.test
  candidates = analysis.selection_candidates(val)
  return {surrogate_name(sample): study.run(candidates, test, predict="surrogate", budgets=budgets, converged=val,
                                            with_baselines=False, predictor_options={"sample": sample})
          for sample in samples}


def adaptive_name(share: float) -> str:
  return f"adaptive {100 * share:.0f}%"


def _adaptive_runs(study_tables: StudyTables, budgets: Sequence[float], shares: Sequence[float],
                   esa_fraction: float, steps_per_training: Optional[int]
                   ) -> tuple[dict[str, study.Selection], dict[str, analysis.Compute]]:
  """The adaptive loop (``selection.adaptive``) replayed on the study's tables with a budget of each
  of ``shares`` of exhaustive training: its selection among the networks it trained, and its compute."""
  val, test, esa = study_tables.val, study_tables.test, study_tables.esa
  candidates, early = analysis.selection_candidates(val), analysis.selection_candidates(esa)
  # The main run's candidates: networks with early losses too (not those of a retraining phase); the
  # adaptive loop grows groups of served tasks, so networks with a helper task are none of its.
  with_early = {early.network_key(r) for r in range(early.num_networks)}
  keys = [k for k in (candidates.network_key(r) for r in range(candidates.num_networks))
          if k in with_early and not k[0] & set(val.helper_tasks)]
  singles = sum(1 for k in keys if len(k[0]) == 1 and has_size(k[1], 1.0))
  oracle = adaptive.TableOracle(candidates, early)
  runs, compute = {}, {}
  if singles < val.num_tasks:
    return runs, compute
  for share in shares:
    settings = adaptive.Settings(trainings=share * len(keys), early_fraction=esa_fraction)
    if settings.trainings < singles:
      continue  # cannot even train the singles it starts from
    result = adaptive.run(oracle, keys, budgets, settings)
    name = adaptive_name(share)
    runs[name] = study.run(result.converged, test, budgets=budgets, converged=val, with_baselines=False)
    compute[name] = analysis.Compute(result.trainings, result.snt_trainings, result.describe(), steps_per_training)
  return runs, compute


def measure(study_tables: StudyTables, comparison: analysis.Comparison,
            surrogate_samples: Sequence[float] = SURROGATE_SAMPLES,
            esa_fraction: Optional[float] = None, adaptive_shares: Sequence[float] = ADAPTIVE_SHARES) -> Optional[Regret]:
  """The regret of every method of ``comparison`` that selects with less than exhaustive training,
  of the surrogate at each of ``surrogate_samples`` and, with an ESA table, of the adaptive loop at
  each of ``adaptive_shares`` of exhaustive training; None unless Optimal is known (every candidate
  converged) and scored on test."""
  optimal_run = comparison.runs.get("optimal")
  if optimal_run is None or any(s.test_loss is None for s in optimal_run.solutions):
    return None
  runs = {name: run for name, run in comparison.runs.items() if name not in ("optimal", "selected", "surrogate")}
  runs.update(_surrogate_runs(study_tables, comparison.budgets, surrogate_samples))
  compute = analysis.compute_per_method(study_tables, dataclasses.replace(comparison, runs={"optimal": optimal_run,
                                                                                           **runs}), esa_fraction)
  if study_tables.esa is not None and adaptive_shares:
    schedule = study_tables.schedule
    fraction = esa_fraction if esa_fraction is not None else (
        analysis.PAPER_ESA_FRACTION if schedule is None else schedule.esa_step / schedule.total_steps)
    adaptive_runs, adaptive_compute = _adaptive_runs(study_tables, comparison.budgets, adaptive_shares, fraction,
                                                     compute["optimal"].steps_per_training)
    runs.update(adaptive_runs)
    compute.update(adaptive_compute)
  exhaustive = compute["optimal"]
  optimal = tuple(float(s.test_loss) for s in optimal_run.solutions)
  methods = []
  for name, run in runs.items():
    regrets = tuple(None if s.test_loss is None else float(s.test_loss) - best for s, best in zip(run.solutions, optimal))
    methods.append(MethodRegret(name, compute[name], compute[name].trainings / exhaustive.trainings, regrets,
                                tuple(None if r is None else r / best for r, best in zip(regrets, optimal))))
  methods.sort(key=lambda m: m.compute.trainings)
  return Regret(tuple(comparison.budgets), optimal, exhaustive, tuple(methods))


def _number(value: Optional[float], digits: int = 4) -> str:
  return "-" if value is None else f"{value:.{digits}f}"


def _percent(value: Optional[float]) -> str:
  return "-" if value is None else f"{100 * value:.2f}%"


def table_lines(regret: Regret) -> list[str]:
  """A markdown table: per method its compute, its share of exhaustive, its mean regrets and per budget."""
  steps = regret.exhaustive.network_steps is not None
  header = (["method", "trainings"] + (["network-steps"] if steps else []) +
            ["% of exhaustive", "mean regret", "mean regret %"] + [f"{b:g}" for b in regret.budgets])
  rows = [["optimal", f"{regret.exhaustive.trainings:g}"] + ([f"{regret.exhaustive.network_steps:,.0f}"] if steps else [])
          + ["100%", "0", "0%"] + [f"{t:.4f}" for t in regret.optimal]]
  for m in regret.methods:
    rows.append([m.method, f"{m.compute.trainings:.4g}"] + ([f"{m.compute.network_steps:,.0f}"] if steps else [])
                + [f"{100 * m.share_of_exhaustive:.0f}%", _number(m.mean_regret), _percent(m.mean_relative_regret)]
                + [_number(r) for r in m.regrets])
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


def text_lines(regret: Regret) -> list[str]:
  """The table with what it shows and what each method trained."""
  goal = regret.meeting_goal()
  return (["Regret: a method's total test loss minus Optimal's at each budget (Optimal's own total in its row); "
           "mean regret % is its mean over budgets relative to Optimal's total. Compute: trainings (one network "
           "trained for the whole schedule, any size) the method needs, including its chosen networks over all "
           "budgets; exhaustive = every candidate network trained (Optimal).", ""]
          + table_lines(regret) + [""]
          + [f"- {m.method}: {m.compute.counted}" for m in regret.methods] + [""]
          + [f"Within {100 * GOAL_REGRET:g}% mean regret at {100 * GOAL_COMPUTE_SHARE:g}% of exhaustive compute or "
             f"less: {', '.join(goal) if goal else 'none of these methods'}.", ""])


def figure(regret: Regret, path: str, title: str = "Regret against training compute") -> None:
  """Mean relative regret (%) against compute, one point per method; the goal's corner dashed."""
  steps = regret.exhaustive.network_steps is not None
  unit = (lambda c: c.network_steps) if steps else (lambda c: c.trainings)
  figure_, axes = plt.subplots(figsize=(7.2, 4.4), dpi=110)
  points = [("optimal", unit(regret.exhaustive), 0.0, 1.0)]
  points += [(m.method, unit(m.compute), 100 * m.mean_relative_regret, m.share_of_exhaustive)
             for m in regret.methods if m.mean_relative_regret is not None]
  for family, line_color in (("surrogate", "teal"), ("adaptive", "tab:red")):
    curve = [(x, y) for name, x, y, _ in points if name.startswith(family)]
    if len(curve) > 1:
      axes.plot(*zip(*sorted(curve)), color=line_color, alpha=0.4, zorder=1)
  # Methods that land on the same point (the surrogate on singles and pairs is HOA) share one label.
  labels: dict[tuple[float, float], list[str]] = {}
  for name, x, y, share in points:
    labels.setdefault((round(x, 6), round(y, 6)), []).append(name)
  labelled = 0
  for name, x, y, share in points:
    color = ("black" if name == "optimal" else "teal" if name.startswith("surrogate") else
             "tab:red" if name.startswith("adaptive") else
             {"esa": "tab:orange", "hoa": "tab:blue", "tag": "tab:purple", "tag_cosine": "tab:pink"}.get(name, "tab:gray"))
    together = labels[(round(x, 6), round(y, 6))]
    axes.scatter([x], [y], color=color, s=40 if name == together[0] else 14, zorder=2 + together.index(name))
    if name == together[0]:
      labelled += 1
      axes.annotate(f"{' = '.join(together)} ({100 * share:.0f}%)", (x, y), textcoords="offset points",
                    xytext=(5, 4 if labelled % 2 else -10), fontsize=7)  # alternating: neighbours' labels clash
  exhaustive = unit(regret.exhaustive)
  axes.axvline(GOAL_COMPUTE_SHARE * exhaustive, color="0.5", linestyle="--", linewidth=1)
  axes.axhline(100 * GOAL_REGRET, color="0.5", linestyle="--", linewidth=1)
  axes.set_xlim(0, 1.08 * max(x for _, x, _, _ in points))
  axes.set_ylim(bottom=min(0.0, min(y for _, _, y, _ in points)) - 0.2)
  axes.set_xlabel(("training compute (network-steps)" if steps else "training compute (trainings of one network)")
                  + "; in brackets: % of exhaustive")
  axes.set_ylabel("mean regret over budgets (% of Optimal's test loss)")
  axes.set_title(title + " (lower-left is better; dashed: 1% regret, 20% compute)", fontsize=9)
  axes.grid(alpha=0.3)
  figure_.tight_layout()
  figure_.savefig(path)
  plt.close(figure_)
