"""The study's figures (matplotlib, written as PNG): k-task networks against k fractional single-task
networks, loss against budget, the chosen groupings, the chosen networks' predictions, transfer
against multi-task affinity, and multi-task gains against the training-set size."""

from __future__ import annotations

from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from tg_jax import workdir as workdir_lib  # noqa: E402
from tg_jax.reporting import analysis  # noqa: E402
from tg_jax.reporting import transfer as transfer_lib  # noqa: E402
from tg_jax.selection import study  # noqa: E402

METHOD_STYLES = {
    "optimal": dict(color="black", marker="o", linewidth=2),
    "hoa": dict(color="tab:blue", marker="s"),
    "esa": dict(color="tab:orange", marker="^"),
    "esa_refined": dict(color="darkorange", marker="^", linestyle="-.", markerfacecolor="white"),
    "tag": dict(color="tab:purple", marker="D"),
    "tag_cosine": dict(color="tab:pink", marker="d"),
    "surrogate": dict(color="teal", marker="v"),
    "all_task": dict(color="tab:gray", linestyle="--"),
    "independent": dict(color="tab:green", linestyle="--", marker="."),
    "random": dict(color="tab:red", linestyle=":"),
    "pessimal": dict(color="tab:brown", linestyle=":"),
}
# Rows beyond the paper's: networks trained with a balancing method (``"<method> (all tasks)"``) and
# a selection with ensembling (``"<selection> + ensembling"``), in colours no method above uses.
EXTRA_COLORS = ("tab:olive", "tab:cyan", "tab:pink", "gold", "navy", "lime")


def _style(name: str, extra_index: int) -> dict:
  if name in METHOD_STYLES:
    return METHOD_STYLES[name]
  color = EXTRA_COLORS[extra_index % len(EXTRA_COLORS)]
  if name.endswith("ensembling"):
    return dict(color=color, linestyle="--", marker="o", markerfacecolor="white")
  return dict(color=color, linestyle="-.", marker="x")


def loss_against_budget(comparison: analysis.Comparison, path: str, title: str = "Total test loss against inference budget") -> None:
  """Figure 4: one line per method; budgets where a method has no answer are gaps. Networks trained
  with a balancing method or an architecture get a line each when there are few of them (the methods
  study's twenty have a figure of their own, "Methods against grouping"). The y-axis keeps every line
  readable: a band that one blown-up seed widens past it is cut at the edge."""
  figure, axes = plt.subplots(figsize=(7.6, 4.2), dpi=110)
  budgets = comparison.budgets
  rows = [(name, np.array([np.nan if v is None else v for v in losses], dtype=float))
          for name, losses in comparison.methods.items()]
  rows = [(name, values) for name, values in rows if not np.all(np.isnan(values))]
  extra_rows = [name for name, _ in rows if name not in METHOD_STYLES]
  if len(extra_rows) > len(EXTRA_COLORS):
    rows = [(name, values) for name, values in rows if name in METHOD_STYLES]
    title += f"\n({len(extra_rows)} method networks: see the figure 'Methods against grouping')"
  drawn, lows, highs = [], [], []
  extra = 0
  for name, values in rows:
    style = _style(name, extra)
    axes.plot(budgets, values, label=name, **style)
    drawn.append(values)
    intervals = comparison.intervals.get(name)
    if intervals:
      low = np.array([np.nan if v is None else v[0] for v in intervals], dtype=float)
      high = np.array([np.nan if v is None else v[1] for v in intervals], dtype=float)
      axes.fill_between(budgets, low, high, color=style["color"], alpha=0.12, linewidth=0)
      lows.append(low)
      highs.append(high)
    extra += name not in METHOD_STYLES
  totals = np.concatenate(drawn)
  totals = totals[np.isfinite(totals)]
  ends = np.concatenate(lows + highs) if lows else totals
  ends = ends[np.isfinite(ends)]
  span = _readable_range(totals, ends, ends)
  axes.set_ylim(*span)
  shown = np.concatenate([totals, ends])
  cut = bool(np.any(shown < span[0]) or np.any(shown > span[1]))
  axes.set_xlabel("inference budget (standard networks)")
  axes.set_ylabel("total test loss (sum over tasks)"
                  + ("\nshaded: 95% interval over seeds" if comparison.intervals else "")
                  + (" (cut at the axis)" if cut else ""))
  axes.set_title(title, fontsize=10)
  axes.grid(alpha=0.3)
  axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  figure.tight_layout()
  figure.savefig(path)
  plt.close(figure)


def _readable_range(totals: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> tuple[float, float]:
  """X-limits that show every total and interval end within three interquartile ranges of the totals
  (at least 5% of their median): one network that blew up on one seed has an interval a hundred times
  the others' and would flatten them all."""
  first, median, third = np.percentile(totals, [25, 50, 75])
  reach = 3 * max(third - first, 0.05 * abs(median))
  low = max(min(float(np.min(lows)), float(np.min(totals))), first - reach)
  high = min(max(float(np.max(highs)), float(np.max(totals))), third + reach)
  pad = 0.05 * (high - low)
  return low - pad, high + pad


def methods_against_grouping(stand_ins: Sequence[analysis.StandIn], path: str) -> None:
  """Can a method stand in for choosing groups? Per all-task method network (one row each, best
  first): its test total with its 95% interval over seeds, and the optimal grouping's at the same
  cost (grey); the dashed line is the equal-weight all-task network at 1 SNT. Totals and interval
  ends beyond the readable range sit at its edge with an arrow (a total's value is written there)."""
  figure, axes = plt.subplots(figsize=(7.6, 0.8 + 0.32 * max(1, len(stand_ins))), dpi=110)
  rows = np.arange(len(stand_ins))[::-1]
  bounds = [s.interval or (s.total, s.total) for s in stand_ins]
  optimal_bounds = [s.optimal_interval or (s.optimal, s.optimal) for s in stand_ins]
  grouping = [(s.optimal, b) for s, b in zip(stand_ins, optimal_bounds) if s.optimal is not None]
  totals = np.array([s.total for s in stand_ins] + [total for total, _ in grouping])
  lows = np.array([b[0] for b in bounds] + [b[0] for _, b in grouping])
  highs = np.array([b[1] for b in bounds] + [b[1] for _, b in grouping])
  span = _readable_range(totals, lows, highs)
  inside = lambda value: min(max(value, span[0]), span[1])
  clipped = False
  for row, entry, (low, high), (optimal_low, optimal_high) in zip(rows, stand_ins, bounds, optimal_bounds):
    if entry.optimal is not None:
      axes.plot([inside(optimal_low), inside(optimal_high)], [row, row], color="0.6", linewidth=5, alpha=0.5,
                solid_capstyle="butt")
      axes.plot([entry.optimal], [row], marker="D", color="0.35", markersize=5, linestyle="none")
    color = {"better": "tab:green", "worse": "tab:red"}.get(entry.verdict, "tab:blue")
    total = inside(entry.total)
    axes.plot([inside(low), inside(high)], [row, row], color=color, linewidth=1.5)
    axes.plot([total], [row], marker="o", color=color, linestyle="none")
    for end, marker in ((low, 4), (high, 5)):  # caret left / right where an end is beyond the axis
      if end != inside(end):
        axes.plot([inside(end)], [row], marker=marker, color="black", markersize=7, linestyle="none")
        clipped = True
    if total != entry.total:
      axes.annotate(f"{entry.total:.3g}", (total, row), textcoords="offset points", xytext=(-4, 5), ha="right",
                    fontsize=7)
  equal = next((s.equal for s in stand_ins if s.equal is not None and s.budget == 1.0), None)
  if equal is not None:
    axes.axvline(equal, color="black", linestyle="--", linewidth=1)
  axes.set_xlim(*span)
  axes.set_yticks(rows, [f"{s.name.removesuffix(' (all tasks)')} ({s.cost:.2g} SNT)" for s in stand_ins],
                  fontsize=8)
  axes.set_xlabel("total test loss (sum over tasks), 95% interval over seeds\n"
                  "grey: optimal grouping at the same cost; dashed: equal weights, all tasks"
                  + ("\narrows: beyond the axis (a total's value is written above it)" if clipped else ""))
  axes.set_title("Can a method stand in for choosing groups? (green: better, red: worse)", fontsize=10)
  axes.grid(axis="x", alpha=0.3)
  figure.tight_layout()
  figure.savefig(path)
  plt.close(figure)


def size_matched(per_k: Sequence[analysis.SizeMatched], path: str) -> None:
  """Figure 2: per group size k, the mean over groups of the k-task network's gain over k single-task
  networks of 1/k SNT (bar; error bar: 95% interval over seeds) and each group's own gain (dots,
  with their intervals)."""
  figure, axes = plt.subplots(figsize=(1.6 + 1.3 * max(len(per_k), 1), 3.8), dpi=110)
  rng = np.random.default_rng(0)  # the dots' horizontal spread only
  for position, entry in enumerate(per_k):
    mean = 100 * entry.mean
    axes.bar(position, mean, width=0.6, color="tab:blue" if mean >= 0 else "tab:red", alpha=0.35,
             edgecolor="black")
    if entry.mean_interval is not None:
      low, high = (100 * v for v in entry.mean_interval)
      axes.errorbar(position, mean, yerr=[[mean - low], [high - mean]], color="black", capsize=5, linewidth=1.5)
    offsets = position + rng.uniform(-0.2, 0.2, len(entry.groups))
    values = 100 * entry.relative
    if entry.group_intervals is not None:
      lows, highs = (100 * v for v in entry.group_intervals)
      axes.errorbar(offsets, values, yerr=[values - lows, highs - values], fmt="none", ecolor="0.55",
                    linewidth=0.8, zorder=2)
    axes.scatter(offsets, values, s=14, color="black", zorder=3)
  axes.axhline(0, color="black", linewidth=0.8)
  axes.set_xticks(range(len(per_k)), [f"k = {e.k}\n({len(e.groups)} groups,\n1/{e.k} SNT each)" for e in per_k],
                  fontsize=8)
  axes.set_xlim(-0.6, len(per_k) - 0.4)
  axes.set_ylabel("% lower loss in the k-task network\n(mean over its tasks)")
  intervals = any(e.mean_interval is not None for e in per_k)
  axes.set_title("One k-task network against k single-task networks\nof 1/k SNT (1 SNT either way; test)"
                 + ("\nbars: mean over groups, 95% interval over seeds; dots: groups" if intervals
                    else "\nbars: mean over groups; dots: groups"), fontsize=9)
  axes.grid(axis="y", alpha=0.3)
  figure.tight_layout()
  figure.savefig(path)
  plt.close(figure)


def _readable_span(values: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> tuple[float, float]:
  """Y-limits (in the values' units) that show every bar and every interval end within three times the
  largest bar (at least 5): with two seeds one interval can be a hundred times its bar and flatten
  all the others."""
  reach = max(5.0, 3 * float(np.max(np.abs(values))))
  low = min(float(np.min(values)), max(float(np.min(lows)), -reach), 0.0)
  high = max(float(np.max(values)), min(float(np.max(highs)), reach), 0.0)
  pad = 0.08 * (high - low)
  return low - pad, high + pad


def _mark_clipped(axes, x: np.ndarray, lows: np.ndarray, highs: np.ndarray, span: tuple[float, float]) -> bool:
  """Arrows at the axis edge for interval ends beyond ``span``; whether there were any."""
  below, above = lows < span[0], highs > span[1]
  axes.plot(x[below], np.full(below.sum(), span[0]), linestyle="none", marker=7, color="black", markersize=6)
  axes.plot(x[above], np.full(above.sum(), span[1]), linestyle="none", marker=6, color="black", markersize=6)
  return bool(below.any() or above.any())


def helper_gains(gains, path: str) -> None:
  """Helper tasks (``reporting.helper_tasks.HelperGains``): per served task, its test-loss gain over its
  single-task network in its pair with each helper and in its best network with a helper (bars; error
  bars: 95% intervals over seeds)."""
  series = [(f"+ {helper}", gains.pair_gain[:, h], None if gains.pair_intervals is None else
             (gains.pair_intervals[0][:, h], gains.pair_intervals[1][:, h])) for h, helper in enumerate(gains.helpers)]
  series.append(("best with a helper (on validation)", gains.best_gain, gains.best_intervals))
  width = 0.8 / len(series)
  figure, axes = plt.subplots(figsize=(1.8 + 1.4 * len(gains.tasks), 4.0), dpi=110)
  positions = np.arange(len(gains.tasks))
  # In percent; intervals None where there is one seed.
  bars = [(label, positions - 0.4 + width * (index + 0.5), 100 * values,
           None if intervals is None else (100 * intervals[0], 100 * intervals[1]))
          for index, (label, values, intervals) in enumerate(series)]
  measured = [(values, *intervals) for _, _, values, intervals in bars if intervals is not None]
  span = _readable_span(*map(np.concatenate, zip(*measured))) if measured else None
  clipped = False
  for index, (label, x, values, intervals) in enumerate(bars):
    axes.bar(x, values, width=width * 0.9, label=label, edgecolor="black", linewidth=0.5,
             color="0.6" if index == len(series) - 1 else None)
    if intervals is not None:
      low, high = intervals
      axes.errorbar(x, values, yerr=[values - low, high - values], fmt="none", ecolor="black", capsize=3, linewidth=1)
      clipped |= _mark_clipped(axes, x, low, high, span)
  if span is not None:
    axes.set_ylim(*span)
  axes.axhline(0, color="black", linewidth=0.8)
  axes.set_xticks(positions, gains.tasks, fontsize=8, rotation=15)
  axes.set_ylabel("% lower test loss than the\nsingle-task network (1 SNT each)")
  axes.set_title("Each served task trained with a helper task"
                 + (f"\n95% intervals over {gains.replicates} seeds" if gains.pair_intervals is not None else "")
                 + ("; arrows: interval goes beyond the axis" if clipped else ""), fontsize=9)
  axes.legend(fontsize=7)
  axes.grid(axis="y", alpha=0.3)
  figure.tight_layout()
  figure.savefig(path)
  plt.close(figure)


def data_size(points: Sequence, path: str) -> None:
  """The training-set sweep (``reporting.data_size.Point``s, by size): per size, the mean over tasks of
  each task's gain in the all-task network and in its pairs over its single-task network (thick, with
  the 95% interval over seeds shaded), and each task's all-task gain (thin)."""
  figure, axes = plt.subplots(figsize=(7.2, 4.2), dpi=110)
  examples = np.array([p.examples for p in points], dtype=float)
  tasks = points[0].task_names
  for j, task in enumerate(tasks):
    axes.plot(examples, [100 * p.gains[0, j] for p in points], color=plt.cm.tab10(j % 10), linewidth=0.9,
              alpha=0.7, marker=".", label=f"{task} (all tasks)")
  for index, (label, style) in enumerate((("all-task network, mean over tasks", dict(color="black", marker="o")),
                                          ("pairs, mean over tasks", dict(color="0.45", marker="s", linestyle="--")))):
    axes.plot(examples, [100 * p.means[index] for p in points], linewidth=2.2, label=label, **style)
    if all(p.mean_intervals is not None for p in points):
      axes.fill_between(examples, [100 * p.mean_intervals[0][index] for p in points],
                        [100 * p.mean_intervals[1][index] for p in points], color=style["color"], alpha=0.15,
                        linewidth=0)
  axes.axhline(0, color="black", linewidth=0.8)
  axes.set_xscale("log")
  axes.set_xticks(examples, [f"{int(e)}" for e in examples])
  axes.minorticks_off()
  axes.set_xlabel("training examples")
  axes.set_ylabel("% lower test loss than the task's\nsingle-task network (same size)")
  intervals = all(p.mean_intervals is not None for p in points)
  axes.set_title("Multi-task against single-task learning as the training set grows"
                 + ("\nshaded: 95% interval over seeds" if intervals else ""), fontsize=9)
  axes.grid(alpha=0.3)
  axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  figure.tight_layout()
  figure.savefig(path)
  plt.close(figure)


def _size_label(cost: float) -> str:
  """A network's size as drawn beside it: "" for a standard network, else its cost in SNT."""
  return "" if abs(cost - 1.0) < 0.02 else f"{cost:.2g}"


def groupings(result: study.Selection, path: str, budgets: Sequence[float] = (), title: str = "",
              probabilities: Optional[Sequence[Optional[float]]] = None) -> None:
  """Figure 5: per budget (fractional ones too), networks (area proportional to cost, sizes other
  than 1 SNT and helper tasks, ``+<helper>``, written beside them; hatched: a predicted network not
  trained yet) joined to the tasks they serve; decoders a network has but does not use are drawn in grey. ``probabilities``: per
  budget of ``result``, the probability that its grouping is the optimum (None: unknown)."""
  indices = [i for i, s in enumerate(result.solutions) if not s.infeasible and (not budgets or s.budget in budgets)]
  tasks = result.tasks
  figure, axes = plt.subplots(max(len(indices), 1), 1,
                              figsize=(max(5.6, 1.3 + 1.0 * len(tasks)), 1.5 * max(len(indices), 1) + 0.3), dpi=110, squeeze=False)
  task_x = np.linspace(0, 1, len(tasks))
  if not indices:
    axes[0, 0].text(0.5, 0.5, "no budget has a feasible selection", ha="center", va="center")
    axes[0, 0].axis("off")
  for axes_row, index_of_budget in zip(axes[:, 0], indices):
    solution = result.solutions[index_of_budget]
    networks = solution.networks
    served = solution.assignment
    # Networks left to right by where their served tasks sit, so few lines cross.
    order = sorted(range(len(networks)), key=lambda i: (np.mean([tasks.index(t) for t, n in served.items() if n == i]
                                                                 or [len(tasks)]), i))
    slots = np.linspace(0, 1, len(networks) + 2)[1:-1] if len(networks) > 1 else np.array([0.5])
    network_x = np.empty(len(networks))
    network_x[order] = slots
    for index, network in enumerate(networks):
      for task in (t for t in network.tasks if t in tasks):  # helper tasks are never served: no column
        used = served[task] == index
        axes_row.plot([network_x[index], task_x[tasks.index(task)]], [1, 0],
                      color="tab:blue" if used else "0.8", linewidth=2 if used else 1, zorder=1)
      predicted = not network.converged
      axes_row.scatter([network_x[index]], [1], s=260 * network.cost, color="white" if predicted else "tab:blue",
                       edgecolor="black", hatch="///" if predicted else None, zorder=2)
      beside = " ".join([_size_label(network.cost)] * bool(_size_label(network.cost))
                        + [f"+{t}" for t in network.tasks if t not in tasks])
      if beside:
        axes_row.annotate(beside, (network_x[index], 1), textcoords="offset points",
                          xytext=(9 + 5 * network.cost, 2), fontsize=7, color="0.3")
    axes_row.scatter(task_x, np.zeros(len(tasks)), s=90, marker="s", color="white", edgecolor="black", zorder=2)
    for x, task in zip(task_x, tasks):
      axes_row.annotate(task, (x, 0), textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8)
    test = solution.test_loss
    probability = None if probabilities is None else probabilities[index_of_budget]
    axes_row.set_title(f"budget {solution.budget:g}: {len(networks)} network(s), cost {solution.cost:.3g}"
                       + (f", test loss {test:.4f}" if test is not None else "")
                       + (f", p={probability:.2f} optimal" if probability is not None else "")
                       + (" (hatched: predicted, not trained yet)" if solution.untrained else ""), fontsize=9)
    axes_row.set_xlim(-0.1, 1.1)
    axes_row.set_ylim(-0.45, 1.3)
    axes_row.axis("off")
  if title:
    figure.suptitle(title, fontsize=10)
  figure.tight_layout()
  figure.savefig(path)
  plt.close(figure)


def heatmap(matrix: np.ndarray, labels: Sequence[str], path: str, title: str,
            significant: Optional[np.ndarray] = None,
            colorbar_label: str = "% better than half-size single-task") -> None:
  """A task-by-task matrix (rows: the task measured; columns: the task it is trained with); with
  ``significant``, entries whose interval includes zero are greyed out."""
  figure, axes = plt.subplots(figsize=(1.2 + 0.75 * len(labels), 1.0 + 0.7 * len(labels)), dpi=110)
  finite = matrix[np.isfinite(matrix)]
  limit = float(np.max(np.abs(finite))) if finite.size else 1.0
  shown = matrix if significant is None else np.where(significant, matrix, np.nan)
  axes.imshow(np.where(np.isfinite(matrix) & ~np.isfinite(shown), 1.0, np.nan), cmap="Greys", vmin=0, vmax=4)
  image = axes.imshow(shown * 100, cmap="RdBu", vmin=-100 * limit, vmax=100 * limit)
  axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
  axes.set_yticks(range(len(labels)), labels, fontsize=8)
  for (i, j), value in np.ndenumerate(matrix):
    if np.isfinite(value):
      # White on the darkest cells, where black would not read.
      dark = np.isfinite(shown[i, j]) and abs(value) > 0.6 * limit
      axes.text(j, i, f"{100 * value:+.1f}", ha="center", va="center", fontsize=7,
                color="white" if dark else "black" if np.isfinite(shown[i, j]) else "0.45")
  figure.colorbar(image, ax=axes, label=colorbar_label)
  axes.set_title(title + ("" if significant is None else "\n(grey: within the seed noise)"),
                 fontsize=9)
  figure.tight_layout()
  figure.savefig(path)
  plt.close(figure)


def _error_bars(values: np.ndarray, intervals: Optional[tuple[np.ndarray, np.ndarray]],
                scale: float) -> Optional[np.ndarray]:
  """``[2, points]`` distances below and above each value (times ``scale``) for matplotlib's errorbar."""
  if intervals is None:
    return None
  return scale * np.nan_to_num(np.stack([values - intervals[0], intervals[1] - values]))


def transfer_against_multitask(panels: Sequence[tuple[str, transfer_lib.Correlation, bool]], path: str) -> None:
  """Figure 3: per source of transfer affinities ``(label, correlation, measured)``, one panel of task
  pairs, transfer affinity (x; in percent when ``measured`` by this run, else on the source's own
  scale) against multi-task affinity (y, percent), each pair named, with 95% intervals over seeds
  where known and the least-squares line."""
  figure, axes_row = plt.subplots(1, len(panels), figsize=(max(6.0, 5.0 * len(panels)), 4.8), dpi=110,
                                  squeeze=False)
  for axes, (label, found, measured) in zip(axes_row[0], panels):
    scale = 100.0 if measured else 1.0
    x, y = scale * found.transfer, 100 * found.multitask
    axes.errorbar(x, y, xerr=_error_bars(found.transfer, found.transfer_intervals, scale),
                  yerr=_error_bars(found.multitask, found.multitask_intervals, 100.0), fmt="o", color="tab:blue",
                  ecolor="0.6", elinewidth=1, capsize=2)
    for (first, second), px, py in zip(found.pairs, x, y):
      axes.annotate(f"{first}\n+{second}", (px, py), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if len(x) >= 2 and np.ptp(x) > 0:
      slope, intercept = np.polyfit(x, y, 1)
      line = np.linspace(x.min(), x.max(), 2)
      axes.plot(line, slope * line + intercept, color="tab:red", linewidth=1, alpha=0.6)
    axes.axhline(0, color="0.8", linewidth=0.8, zorder=0)
    interval = "" if found.r_interval is None else f"\nper seed: 95% interval [{found.r_interval[0]:+.2f}, {found.r_interval[1]:+.2f}]"
    axes.set_title(f"{label}\nPearson r = {found.r:+.2f} (p = {found.p:.2g}, {len(x)} pairs){interval}", fontsize=9)
    axes.set_xlabel("transfer affinity, symmetric: % better than the target's own network" if measured
                    else "transfer affinity, symmetric (the CSV's values)", fontsize=8)
    axes.set_ylabel("multi-task affinity, Table 2 (%)", fontsize=8)
    axes.margins(0.18)
    axes.grid(alpha=0.3)
  bars = any(c.transfer_intervals or c.multitask_intervals for _, c, _ in panels)
  figure.suptitle("Transfer against multi-task affinity" + ("; bars: 95% intervals over seeds" if bars else "")
                  + f"\n(the paper, with Taskonomy's affinities: r = {transfer_lib.PAPER_R}, p = {transfer_lib.PAPER_P})",
                  fontsize=9)
  figure.tight_layout()
  figure.savefig(path)
  plt.close(figure)


def _wrapped_name(name: str, width: int = 18) -> str:
  """A network's name over lines of about ``width`` characters, broken after a "+"."""
  lines = [""]
  for part in name.replace("+", "+\n").split("\n"):
    if lines[-1] and len(lines[-1]) + len(part) > width:
      lines.append("")
    lines[-1] += part
  return "\n".join(lines)


def _draw_label(axes, kind: str, value: np.ndarray, truth: np.ndarray) -> None:
  """One task's label or prediction for one image, scaled like its ``truth`` so cells compare."""
  if kind == "classification":
    axes.text(0.5, 0.5, f"class {int(value)}", ha="center", va="center", fontsize=9, transform=axes.transAxes)
  elif kind == "segmentation":
    axes.imshow(value, cmap="tab20", vmin=-0.5, vmax=19.5, interpolation="nearest")
  elif value.shape[-1] == 3:
    low, high = truth.min(axis=(0, 1)), truth.max(axis=(0, 1))
    axes.imshow(np.clip((value - low) / np.maximum(high - low, 1e-12), 0.0, 1.0))
  else:
    low, high = np.percentile(truth[..., 0], [2, 98])
    axes.imshow(value[..., 0], cmap="viridis", vmin=low, vmax=max(high, low + 1e-12))


def predictions(predicted: workdir_lib.Predictions, path: str) -> None:
  """Figure 6: per test image and task (rows), the input, the ground truth and each method's
  prediction (columns), each prediction named by the network that made it."""
  examples, tasks, methods = len(predicted.images), predicted.tasks, predicted.methods
  rows, columns = examples * len(tasks), 2 + len(methods)
  figure, axes = plt.subplots(rows, columns, figsize=(1.45 * columns, 1.45 * rows + 0.5), dpi=90, squeeze=False)
  for example in range(examples):
    for j, (task, kind) in enumerate(zip(tasks, predicted.kinds)):
      row = axes[example * len(tasks) + j]
      truth = predicted.truth[j][example]
      if j == 0:
        row[0].imshow(predicted.images[example])
        row[0].set_title(f"test image {example + 1}", fontsize=8)
      _draw_label(row[1], kind, truth, truth)
      row[1].set_ylabel(task, fontsize=8)
      for i, method in enumerate(methods):
        _draw_label(row[2 + i], kind, predicted.outputs[j][i][example], truth)
        row[2 + i].set_xlabel(_wrapped_name(str(predicted.networks[i, j])), fontsize=6, labelpad=2)
  for index, title in enumerate(["input", "ground truth", *methods]):
    axes[0, index].set_title((axes[0, index].get_title() + "\n" if index == 0 else "") + title, fontsize=9)
  for axes_cell in axes.flat:
    axes_cell.set_xticks([])
    axes_cell.set_yticks([])
    if not axes_cell.images and not axes_cell.texts:
      axes_cell.axis("off")
  figure.suptitle(f"Networks chosen at budget {predicted.budget:g}:\npredictions (under each: the network that made it)",
                  fontsize=10)
  figure.tight_layout()
  figure.savefig(path)
  plt.close(figure)
