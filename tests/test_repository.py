"""The repository stands on its own: no file names a path on the machine it was written on.

Flagged: absolute paths under ``/work``, ``/root``, ``/home`` or ``/Users`` (someone's machine or
workspace), and absolute paths to a Markdown file (a notes file outside the repository; link
documents in the repository by relative path). Placeholders in usage examples stay legitimate:
``/scratch/pairs``, ``/data/taskonomy``, ``/tmp/study``, ``~/tensorflow_datasets``. URLs are not paths.
"""

import os
import re

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKED = ("tg_jax", "experiments", "tests", "launch", "docs", "benchmarks", ".ci", "README.md", "WORKSPACE.md")
TEXT_SUFFIXES = (".py", ".md", ".sh", ".sbatch", ".txt", ".toml", ".cfg", ".ini", ".yaml", ".yml", ".json", "")
# An absolute path: starts after a character that cannot precede one inside a word, URL or relative path.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~$}/:-])/[\w.-]+(?:/[\w.-]*)*")
MACHINE_ROOTS = ("work", "root", "home", "Users")


def _files():
  for entry in CHECKED:
    path = os.path.join(REPO_ROOT, entry)
    if os.path.isfile(path):
      yield path
    for directory, subdirectories, files in os.walk(path):
      subdirectories[:] = [d for d in subdirectories if d != "__pycache__" and not d.startswith(".")]
      for name in files:
        if os.path.splitext(name)[1] in TEXT_SUFFIXES:
          yield os.path.join(directory, name)


def machine_paths(text):
  """``(line number, path)`` for every forbidden absolute path in ``text``."""
  found = []
  for number, line in enumerate(text.splitlines(), start=1):
    for match in _ABSOLUTE_PATH.finditer(line):
      path = match.group(0).rstrip(".")
      if path.split("/")[1] in MACHINE_ROOTS or path.endswith(".md"):
        found.append((number, path))
  return found


def test_the_rule_flags_machine_paths_and_spares_placeholders():
  # Roots joined at run time, so this file names no machine path itself.
  work, root, home, users, opt = ("/" + name for name in ("work", "root", "home", "Users", "opt"))
  # The line tg_jax/data/__init__.py once opened with.
  assert machine_paths(f'"""Datasets for multi-task learning (the contract is {work}/notes/data_api.md)."""') == [
      (1, f"{work}/notes/data_api.md")]
  assert machine_paths(f"cd {root}/tg && ls {home}/alice/data {users}/bob\nsee {opt}/notes/plan.md.") == [
      (1, f"{root}/tg"), (1, f"{home}/alice/data"), (1, f"{users}/bob"), (2, f"{opt}/notes/plan.md")]
  assert not machine_paths(
      "--workdir=/scratch/pairs --manual_dir=/data/taskonomy --workdir=/tmp/study ~/tensorflow_datasets\n"
      "docs/study/report.md ../shared/x.md https://github.com/google/flax/blob/main/README.md\n"
      "#!/usr/bin/env bash; os.path.join(root, 'home'); WORKDIR/report.md; $HOME/work; ${OUT}/x.md")


def test_no_file_names_a_path_outside_the_repository():
  found = []
  for path in _files():
    if path == os.path.abspath(__file__):
      continue  # its examples are what the rule must catch
    try:
      with open(path, encoding="utf-8") as f:
        text = f.read()
    except UnicodeDecodeError:
      continue
    found += [f"{os.path.relpath(path, REPO_ROOT)}:{n}: {p}" for n, p in machine_paths(text)]
  assert not found, "paths outside the repository:\n" + "\n".join(found)


if __name__ == "__main__":
  pytest.main([__file__])
