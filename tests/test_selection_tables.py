"""Results tables: both formats round-trip, and every kind of bad table gets an error naming where."""

import numpy as np
import pytest

from tg_jax.selection import tables
from tg_jax.selection.tables import TableError

GOOD = """tasks,cost,depth,normals,edges
depth,0.5,0.20,,
normals,0.5,,0.30,
edges,0.5,,,0.10
depth+normals,1,0.18,0.29,
depth+normals+edges,1,0.19,0.31,0.12
"""


def test_csv_round_trip(tmp_path):
  table = tables.parse_csv(GOOD)
  assert table.task_names == ("depth", "normals", "edges")
  assert table.network_tasks[3] == ("depth", "normals")
  np.testing.assert_allclose(table.costs, [0.5, 0.5, 0.5, 1, 1])
  assert table.losses[0, 1] == np.inf and table.losses[3, 1] == pytest.approx(0.29)
  path = tmp_path / "sub" / "val.csv"
  tables.write_csv(table, str(path))
  again = tables.read_csv(str(path))
  assert again.network_tasks == table.network_tasks
  np.testing.assert_array_equal(again.losses, table.losses)
  np.testing.assert_array_equal(again.costs, table.costs)


def test_standley_format_first_line_is_half_size_singles():
  text = "0.1\t0.2\t0.3\n0.09\t\t\n\t0.19\t0.28\n"
  table = tables.parse_standley(text, task_names=("a", "b", "c"))
  assert table.network_tasks == (("a",), ("b",), ("c",), ("a",), ("b", "c"))
  np.testing.assert_allclose(table.costs, [0.5, 0.5, 0.5, 1, 1])
  assert table.losses[4, 2] == pytest.approx(0.28)


def _error(text):
  with pytest.raises(TableError) as info:
    tables.parse_csv(text, source="t.csv")
  return str(info.value)


@pytest.mark.parametrize("cell, words", [
    ("abc", ["line 2", "'depth'", "'abc' is not a number"]),
    ("nan", ["line 2", "'depth'", "finite"]),
    ("inf", ["line 2", "'depth'", "finite"]),
])
def test_bad_loss_cells_name_line_and_column(cell, words):
  message = _error(f"tasks,cost,depth,normals\ndepth,1,{cell},\nnormals,1,,0.3\n")
  for word in words:
    assert word in message


def test_negative_cost():
  message = _error("tasks,cost,depth\ndepth,-1,0.2\n")
  assert "line 2" in message and "'cost'" in message and "negative cost" in message


def test_non_numeric_cost():
  assert "'cost'" in _error("tasks,cost,depth\ndepth,cheap,0.2\n")


def test_unknown_task_in_tasks_cell():
  message = _error("tasks,cost,depth,normals\ndepth+dept,1,0.2,\nnormals,1,,0.3\n")
  assert "line 2" in message and "unknown task 'dept'" in message and "depth, normals" in message


def test_duplicate_task_column():
  message = _error("tasks,cost,depth,depth\ndepth,1,0.2,\n")
  assert "line 1" in message and "appears twice" in message


def test_bad_header():
  assert "must start 'tasks,cost,'" in _error("network,cost,depth\ndepth,1,0.2\n")


def test_task_that_no_network_solves():
  message = _error("tasks,cost,depth,normals\ndepth,1,0.2,\n")
  assert "no network solves task(s) ['normals']" in message and "t.csv" in message


def test_loss_outside_the_networks_tasks():
  message = _error("tasks,cost,depth,normals\ndepth,1,0.2,0.3\nnormals,1,,0.3\n")
  assert "line 2" in message and "'normals'" in message and "has a loss" in message


def test_missing_loss_for_a_trained_task():
  message = _error("tasks,cost,depth,normals\ndepth+normals,1,0.2,\nnormals,1,,0.3\n")
  assert "line 2" in message and "'normals'" in message and "empty" in message


def test_ragged_row():
  assert "line 2" in _error("tasks,cost,depth,normals\ndepth,1,0.2\n")


def test_standley_too_many_columns():
  with pytest.raises(TableError, match="line 1.*--task_names"):
    tables.parse_standley("0.1\t0.2\t0.3\n", task_names=("a", "b"))


def test_standley_non_numeric_names_line_and_task():
  with pytest.raises(TableError, match=r"line 2, column 'b'.*'x' is not a number"):
    tables.parse_standley("0.1\t0.2\n\tx\n", task_names=("a", "b"))


def test_test_table_must_match_validation_networks():
  val = tables.parse_csv(GOOD)
  other = tables.parse_csv(GOOD.replace("depth+normals,1,0.18,0.29,", "depth+edges,1,0.18,,0.2"))
  with pytest.raises(TableError) as info:
    other.aligned_to(val)
  message = str(info.value)
  assert "depth+normals @ 1 SNT" in message and "depth+edges @ 1 SNT" in message


def test_test_table_rows_are_matched_by_network_not_order():
  val = tables.parse_csv(GOOD)
  lines = GOOD.strip().split("\n")
  shuffled = tables.parse_csv("\n".join([lines[0]] + lines[1:][::-1]))
  aligned = shuffled.aligned_to(val)
  np.testing.assert_array_equal(aligned.losses, val.losses)


def test_missing_file_says_what_to_pass(tmp_path):
  with pytest.raises(TableError, match="does not exist"):
    tables.read_csv(str(tmp_path / "nope.csv"))


def test_a_byte_order_mark_is_accepted(tmp_path):
  # Spreadsheet programs save CSV as UTF-8 with a byte-order mark.
  path = tmp_path / "val.csv"
  path.write_bytes("tasks,cost,a,b\na+b,1,0.5,0.25\n".encode("utf-8-sig"))
  assert tables.read_csv(str(path)).task_names == ("a", "b")


def test_a_repeated_network_row_is_refused():
  with pytest.raises(TableError, match=r"line 3: network a\+b @ 1 SNT repeats line 2.*seed"):
    tables.parse_csv("tasks,cost,a,b\na+b,1,0.5,0.25\na+b,1,0.6,0.2\n")


def test_test_table_with_task_columns_in_another_order_is_matched_by_name():
  val = tables.parse_csv("tasks,cost,a,b\na+b,1,0.5,0.25\na,0.5,0.7,\nb,0.5,,0.3\n")
  test = tables.parse_csv("tasks,cost,b,a\nb,0.5,0.31,\na+b,1,0.26,0.51\na,0.5,,0.71\n")
  aligned = test.aligned_to(val)
  assert aligned.task_names == ("a", "b")
  np.testing.assert_array_equal(aligned.losses, [[0.51, 0.26], [0.71, np.inf], [np.inf, 0.31]])
  with pytest.raises(TableError, match=r"missing \['b'\]"):
    tables.parse_csv("tasks,cost,a,c\na+c,1,0.5,0.25\n").aligned_to(val)


def test_a_table_of_fewer_tasks_joins_with_unsolved_columns():
  # A retraining run of a few networks writes only the columns its networks solve.
  first = tables.ResultsTable.from_rows(("a", "b", "c"), [(("a", "b", "c"), 1.0, {"a": 1.0, "b": 2.0, "c": 3.0})])
  second = tables.ResultsTable.from_rows(("c", "b"), [(("b", "c"), 1.0, {"b": 0.5, "c": 0.25})])
  joined = first.concat(second)
  assert joined.task_names == ("a", "b", "c")
  np.testing.assert_array_equal(joined.losses[1], [np.inf, 0.5, 0.25])
  replicas = tables.Replicas.from_table(first).concat(tables.Replicas.from_table(second))
  np.testing.assert_array_equal(replicas.samples[1, 0], [np.inf, 0.5, 0.25])
  with pytest.raises(TableError, match=r"the second has task\(s\) \['a'\]"):
    second.concat(first)
