r"""Selection speed: the paper's Table 4 selections and larger synthetic studies. Prints JSON.

  python benchmarks/selection.py [--reference=../shared/reference/standley2020] [--repeats=3]

(a) the 27 selections of Table 4 (optimal, HOA, ESA x 9 budgets) on the authors' setting 1;
(b) 9 tasks, HOA over all 511 groups, budgets 1-5; (c) 12 tasks, HOA over 4,095 groups, budgets 1-4;
(d) 16 tasks, candidate groups of up to 3 tasks (HOA), budgets 6-8 (covering 16 tasks with groups
of at most 3 needs 5.5 SNT); (e) as (b) with costs jittered by up to 5% (measured costs off the
0.5 grid, where the relaxation bounds rather than solves); (f) selection under uncertainty: 5 tasks,
all subsets and half-size singles, 3 seed replicas, 1000 bootstrap resamples x 9 budgets with the
baselines' paired differences (study.run with replicas); (g) 100 tasks, singles, half-size singles and
all 4,950 pairs as measured networks (no predictions), budgets 50-100: the integer programme (HiGHS),
each answer with its gap; (h) 40 tasks, singles, half-size singles and all 780 pairs with HOA's
predictions for every group of 3+ tasks (2^40 of them, generated on demand: column generation,
``tg_jax.selection.columns``), budgets 1-10, each answer with its proven gap (goal: at most 1% in
under 60 s in all); (i) as (h) on 20 tasks (190 pairs), budgets 1-8, where the exact pricing's
search fits its node limit. Times are the best of --repeats runs, in seconds, selection only (tables
read and predicted beforehand); (g), (h) and (i) run once and also give their process CPU seconds.
``--cases=g,h`` runs only those.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tg_jax.selection import columns, hoa, selector, study, synthetic, tables  # noqa: E402


def best_time(function, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = function()
    times.append(time.perf_counter() - start)
  return min(times), result


def synthetic_case(name, num_tasks, max_order, budgets, repeats, cost_jitter=0.0):
  table = hoa.predict(synthetic.random_table(num_tasks, seed=0, max_order=2), max_order=max_order)
  if cost_jitter:
    # Costs measured from FLOPs are off the 0.5 grid; the relaxation then only bounds the search.
    rng = np.random.default_rng(0)
    table = tables.ResultsTable(table.task_names, table.network_tasks,
                                table.costs * rng.uniform(1 - cost_jitter, 1 + cost_jitter, table.num_networks),
                                table.losses)
  seconds, solutions = best_time(lambda: selector.select_many(table, budgets, return_stats=True), repeats)
  return {"case": name, "tasks": num_tasks, "candidate_networks": table.num_networks, "budgets": budgets,
          "seconds": round(seconds, 4),
          "search_nodes": [stats.nodes for stats in solutions[1]],
          "networks_chosen": [len(s.networks) for s in solutions[0]]}


def cpu_time(function):
  """``(process CPU seconds, result)``: on a shared machine wall time measures the other work too."""
  start = time.process_time()
  result = function()
  return time.process_time() - start, result


def many_tasks_case(num_tasks, budgets):
  table = synthetic.random_table(num_tasks, seed=0, max_order=2)
  cpu, (seconds, solutions) = cpu_time(lambda: best_time(lambda: selector.select_many(table, budgets), 1))
  return {"case": f"g_{num_tasks}_tasks_pairs_integer_programme", "tasks": num_tasks,
          "candidate_networks": table.num_networks, "budgets": budgets, "seconds": round(seconds, 2),
          "cpu_seconds": round(cpu, 2),
          "goal_seconds": 300.0, "method": solutions[0].method, "gaps": [s.gap for s in solutions],
          "networks_chosen": [len(s.networks) for s in solutions]}


def generated_groups_case(letter, num_tasks, budgets):
  table = synthetic.random_table(num_tasks, seed=0, max_order=2)
  cpu, (seconds, (generated, solutions)) = cpu_time(lambda: best_time(lambda: columns.select_many(table, budgets), 1))
  return {"case": f"{letter}_{num_tasks}_tasks_hoa_generated_groups", "tasks": num_tasks,
          "measured_networks": table.num_networks, "groups_generated": generated.num_networks - table.num_networks,
          "budgets": budgets, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "goal_seconds": 60.0,
          "goal_gap": 0.01,
          "method": solutions[0].method, "gaps": [round(s.gap, 5) for s in solutions],
          "max_gap": round(max(s.gap for s in solutions), 5), "objectives": [round(s.objective, 4) for s in solutions]}


def uncertainty_case(repeats, num_seeds=3, resamples=1000):
  truth = synthetic.random_table(5, seed=0)
  rng = np.random.default_rng(0)
  trained = rng.normal(0, 0.05, (truth.num_networks, num_seeds, truth.num_tasks))
  seeds = tuple(tuple(range(num_seeds)) for _ in range(truth.num_networks))
  val, test = (tables.Replicas(truth, seeds, truth.losses[:, None, :] * (1 + trained + rng.normal(0, 0.005, trained.shape)))
               for _ in range(2))
  budgets = study.default_budgets(truth)
  seconds, result = best_time(lambda: study.run(val.table, test.table, replicas=(val, test), bootstrap=resamples,
                                                with_baselines=False), repeats)
  return {"case": "f_uncertainty_5_tasks_3_seeds", "networks": truth.num_networks, "resamples": resamples,
          "budgets": len(budgets), "seconds": round(seconds, 3), "goal_seconds": 5.0,
          "probability_optimal": [round(s.uncertainty.probability_optimal, 3) for s in result.solutions]}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--reference", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                          "reference", "standley2020"))
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--cases", default="a,b,c,d,e,f,g,h,i", help="Which cases to run, by letter.")
  args = parser.parse_args()
  cases = set(args.cases.split(","))
  results = []
  budgets = [1 + 0.5 * i for i in range(9)]
  if "a" in cases and os.path.isdir(args.reference):
    val = tables.read_standley(os.path.join(args.reference, "setting1_val.tsv"))
    esa = tables.read_standley(os.path.join(args.reference, "setting1_esa.tsv"))
    predicted = hoa.predict(val)
    seconds, _ = best_time(lambda: [selector.select_many(t, budgets) for t in (val, predicted, esa)], args.repeats)
    results.append({"case": "a_table4_setting1", "tasks": 5, "selections": 27, "seconds": round(seconds, 4),
                    "goal_seconds": 0.25})
  elif "a" in cases:
    results.append({"case": "a_table4_setting1", "skipped": f"no reference tables at {args.reference}"})
  runs = {
      "b": lambda: dict(synthetic_case("b_9_tasks_hoa", 9, None, [1, 2, 3, 4, 5], args.repeats), goal_seconds=1.0),
      "c": lambda: dict(synthetic_case("c_12_tasks_hoa", 12, None, [1, 2, 3, 4], args.repeats), goal_seconds=10.0),
      "d": lambda: synthetic_case("d_16_tasks_groups_of_3", 16, 3, [6, 7, 8], args.repeats),
      "e": lambda: synthetic_case("e_9_tasks_hoa_costs_off_grid_5pct", 9, None, [1, 2, 3, 4, 5], args.repeats,
                                  cost_jitter=0.05),
      "f": lambda: uncertainty_case(args.repeats),
      "g": lambda: many_tasks_case(100, [50, 60, 75, 100]),
      "h": lambda: generated_groups_case("h", 40, list(range(1, 11))),
      "i": lambda: generated_groups_case("i", 20, list(range(1, 9))),
  }
  results += [run() for letter, run in runs.items() if letter in cases]
  print(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}",
                    "results": results}, indent=2))


if __name__ == "__main__":
  main()
