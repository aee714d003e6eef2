"""ESA's refinement loop on tables alone."""

from tg_jax.selection import refine, tables

TASKS = ("a", "b")
# Early losses make b's own network look best for b, so ESA chooses a+b and b at budget 2; converged,
# a+b is better on b too, and b's network serves nothing.
EARLY = tables.ResultsTable.from_rows(TASKS, [(("a", "b"), 1.0, {"a": 0.5, "b": 0.9}), (("b",), 1.0, {"b": 0.6}),
                                              (("a",), 1.0, {"a": 0.7})])
CONVERGED = tables.ResultsTable.from_rows(TASKS, [(("a", "b"), 1.0, {"a": 0.5, "b": 0.4}), (("b",), 1.0, {"b": 0.6}),
                                                  (("a",), 1.0, {"a": 0.7})])
EVERY_NETWORK = frozenset(CONVERGED.network_key(r) for r in range(CONVERGED.num_networks))


def test_a_network_serving_nothing_once_trained_is_dropped_and_the_choice_rerun():
  refined = refine.replay(EARLY, CONVERGED, CONVERGED, [2.0], [EVERY_NETWORK], max_rounds=3)
  assert refined.stable and not refined.pending
  only, = refined.rounds
  assert only.dropped == {2.0: ("b @ 1 SNT",)} and only.reasons == {"b @ 1 SNT": "serves no task once trained"}
  assert only.trained == ()  # the new choice, a+b alone, is trained already
  solution, = refined.selection.solutions
  assert [n.tasks for n in solution.networks] == [("a", "b")] and solution.test_loss == 0.9


def test_without_rounds_left_the_choice_is_not_stable():
  refined = refine.replay(EARLY, CONVERGED, CONVERGED, [2.0], [EVERY_NETWORK], max_rounds=0)
  assert not refined.stable and refined.rounds == ()
  assert {n.tasks for n in refined.selection.solutions[0].networks} == {("a", "b")}  # b's left out as unused


def test_before_esa_s_own_choice_is_trained_nothing_is_refined():
  # b's network is not trained yet: the retraining phase trains it before any round.
  trained = CONVERGED.subset([0, 2])
  refined = refine.replay(EARLY, trained, trained, [2.0], [frozenset(trained.network_key(r) for r in (0, 1))],
                          max_rounds=3)
  assert refined.pending == ((("b",), 1.0),) and refined.rounds == () and not refined.stable
