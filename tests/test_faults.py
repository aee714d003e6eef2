"""Fault injection on tiny workdirs: each case of issue 16 either ends with the results of an undamaged
run or stops early with one line naming the file, the key or the process, and the fix.

One finished tiny run (``finished``) is copied for each test; the tests that must not compile patch
the trainer's training path to fail, so a regression shows as that failure rather than as a slow test.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest

import train_fakes
from tg_jax import finish
from tg_jax import workdir as workdir_lib
from tg_jax.training import checkpoints
from tg_jax.training import cohorts as cohorts_lib
from tg_jax.training import results
from tg_jax.training import trainer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  config = train_fakes.tiny_config()
  config.num_epochs = 2  # 4 steps, checkpoints at steps 2 and 4
  return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished tiny run's workdir (do not change it: copy it with ``_copy``)."""
  path = str(tmp_path_factory.mktemp("faults") / "finished")
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(train_fakes.FAKE_DATA, "on_step", None)
    trainer.train_and_evaluate(_config(), path)
  return workdir_lib.Workdir(path)


def _copy(finished, tmp_path, name="copy"):
  target = str(tmp_path / name)
  shutil.copytree(finished.path, target)
  return workdir_lib.Workdir(target)


def _results(workdir):
  """Every results file's bytes, by name."""
  return {name: open(os.path.join(workdir.results, name), "rb").read() for name in sorted(os.listdir(workdir.results))}


def _no_training(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("a finished workdir was trained or compiled again")
  monkeypatch.setattr(trainer, "_train", refuse)


# Case 1: a damaged newest checkpoint.

def _damage(checkpoint, how):
  if how == "metadata":
    with open(os.path.join(checkpoint, "state", "_METADATA"), "wb") as f:
      f.write(bytes(range(128, 256)))
  elif how == "truncated arrays":
    for path in glob.glob(os.path.join(checkpoint, "state", "ocdbt.process_0", "d", "*")):
      os.truncate(path, 20)
  else:  # progress
    with open(os.path.join(checkpoint, "progress", "metadata"), "wb") as f:
      f.write(b"\xff{not json")


# A failed tensorstore read leaves orbax an asyncio callback that runs after its loop closed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["metadata", "truncated arrays", "progress"])
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_older_one(finished, tmp_path, how):
  workdir = _copy(finished, tmp_path)
  os.remove(workdir.networks)  # an unfinished run: it resumes from its last checkpoint
  _damage(os.path.join(workdir.checkpoints, "4"), how)
  assert trainer.train_and_evaluate(_config(), workdir.path)["status"] == trainer.STATUS_COMPLETE
  assert _results(workdir) == _results(finished)  # resumption is exact: step 2, then steps 3 and 4 again
  assert os.listdir(workdir.damaged_checkpoints) == ["4"]


def test_no_intact_checkpoint_stops_before_compiling_and_names_each(finished, tmp_path, monkeypatch):
  workdir = _copy(finished, tmp_path)
  os.remove(workdir.networks)
  for step in ("2", "4"):
    _damage(os.path.join(workdir.checkpoints, step), "metadata")

  def compile_nothing(*args, **kwargs):
    raise AssertionError("compiled before checking the checkpoints")

  monkeypatch.setattr(cohorts_lib, "make_runners", compile_nothing)
  with pytest.raises(checkpoints.NoIntactCheckpointError) as error:
    trainer.train_and_evaluate(_config(), workdir.path)
  message = str(error.value)
  assert "\n" not in message and "move" in message
  assert all(os.path.join(workdir.checkpoints, step) in message for step in ("2", "4"))


# Case 2 (and 5): a finished workdir's tables are derived from networks.json, without training.

def test_lost_tables_of_a_finished_workdir_are_rewritten_without_training(finished, tmp_path, monkeypatch):
  workdir = _copy(finished, tmp_path)
  for split in workdir_lib.SPLITS:
    os.remove(workdir.table(split))
  with open(workdir.table("val"), "w") as f:  # one damaged rather than lost
    f.write("tasks,cost\ngarbage")
  _no_training(monkeypatch)
  summary = trainer.train_and_evaluate(_config(), workdir.path)
  assert summary["status"] == trainer.STATUS_COMPLETE and summary["run"] == finished.read_run()
  assert _results(workdir) == _results(finished)
  assert workdir_lib.load_study(workdir).val.num_networks == 9


def test_damaged_networks_json_is_rebuilt_from_the_checkpoint(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  with open(workdir.networks, "w") as f:
    f.write("{garbage")
  os.remove(workdir.examples("val"))
  assert trainer.train_and_evaluate(_config(), workdir.path)["status"] == trainer.STATUS_COMPLETE
  assert _results(workdir) == _results(finished)


# Case 3: one run per workdir; no fixed temporary names.

def test_a_second_run_on_a_busy_workdir_stops_naming_the_first(finished, tmp_path, monkeypatch):
  workdir = _copy(finished, tmp_path)
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from tg_jax import workdir as w\n"
       "with w.locked(w.Workdir(sys.argv[1])):\n  print('locked', flush=True); time.sleep(60)", workdir.path],
      cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    _no_training(monkeypatch)
    with pytest.raises(workdir_lib.WorkdirBusyError, match=rf"in use by process {holder.pid} on .*wait for"):
      trainer.train_and_evaluate(_config(), workdir.path)
  finally:
    holder.kill()
    holder.wait()
  # Killed, its lock file still names it; the kernel released the lock, so the next run takes over.
  assert str(holder.pid) in open(workdir.lock).read()
  assert trainer.train_and_evaluate(_config(), workdir.path)["status"] == trainer.STATUS_COMPLETE
  assert open(workdir.lock).read() == ""  # released


def test_one_process_nests_the_lock_and_threads_of_another_do_not_share_it(tmp_path):
  workdir = workdir_lib.Workdir(str(tmp_path / "w"))
  with workdir_lib.locked(workdir):
    with workdir_lib.locked(workdir):  # main around the trainer and finish
      pass
    assert json.loads(open(workdir.lock).read())["pid"] == os.getpid()
  with workdir_lib.locked(workdir):
    pass


def test_atomic_writes_use_temporary_names_of_their_own(tmp_path):
  # The fixed names used before: a leftover (here a directory) or a concurrent writer's file there
  # broke the write.
  config = _config()
  os.makedirs(tmp_path / "config.json.tmp")
  os.makedirs(tmp_path / "log.jsonl.tmp")
  assert not checkpoints.check_or_write_config(config, str(tmp_path))
  assert checkpoints.check_or_write_config(config, str(tmp_path))
  results.RunLog(str(tmp_path / "log.jsonl"), resume_step=None).close()
  written = []

  def write(index):
    workdir_lib.write_json(str(tmp_path / "same.json"), {"writer": index, "payload": "x" * 100_000})
    written.append(index)

  threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert len(written) == 8 and json.loads(open(tmp_path / "same.json").read())["writer"] in range(8)
  assert sorted(os.listdir(tmp_path)) == ["config.json", "config.json.tmp", "log.jsonl", "log.jsonl.tmp", "same.json"]


# Case 4: a bad config leaves the workdir untouched.

@pytest.mark.parametrize("key, value, message", [
    ("model.name", "nope", r"model.name: unknown model 'nope'; known models: .*toy_conv"),
    ("data.name", "nope", r"data.name: unknown dataset 'nope'; known datasets: .*fake"),
    ("tasks", ("toy_depth", "toy_dpth"), r"tasks: dataset 'fake' has no task 'toy_dpth' \(did you mean toy_depth\?\)"),
    ("num_devices", 8, r"num_devices=8 but this host has 2 devices"),
    ("networks.extra", ("toy_depth+toy_normals:nope",), r"unknown method 'nope'"),
    ("optimizer.lerning_rate", 0.1, r"unknown key optimizer.lerning_rate; did you mean optimizer.learning_rate\?"),
    ("data.num_tain", 10, r"unknown key data.num_tain; did you mean data.num_train\?"),
])
def test_a_config_error_is_one_line_and_writes_nothing(tmp_path, key, value, message):
  config = _config()
  *parents, leaf = key.split(".")
  target = config
  for parent in parents:
    target = target[parent]
  with target.ignore_type():
    target[leaf] = value
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=message) as error:
    trainer.train_and_evaluate(config, str(workdir))
  assert "\n" not in str(error.value)
  assert not workdir.exists()


# Case 6: errors that name the file, the key, the fix; one line, no traceback.

def _main(*arguments):
  return subprocess.run([sys.executable, "-m", "tg_jax.main", "--config=experiments/pairs.py", *arguments],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_main_reports_an_unknown_override_and_a_file_as_workdir_in_one_line(tmp_path):
  done = _main("--config.optimizer.lerning_rate=0.1", f"--workdir={tmp_path / 'run'}")
  assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
  assert done.stderr.strip().splitlines()[-1] == (
      "error: invalid config: unknown key optimizer.lerning_rate; did you mean optimizer.learning_rate? (no part of "
      "tg_jax reads it: remove it or fix its name; keys are listed in tg_jax/training/config.py's base_config)")
  assert not (tmp_path / "run").exists()
  a_file = tmp_path / "notes.txt"
  a_file.write_text("")
  done = _main(f"--workdir={a_file}")
  assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
  assert done.stderr.strip().splitlines()[-1] == (f"error: workdir {a_file} is a file, not a directory; pass a "
                                                  "directory as --workdir")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes in read-only directories")
def test_a_read_only_workdir_stops_before_compiling(finished, tmp_path, monkeypatch):
  workdir = _copy(finished, tmp_path)
  os.remove(workdir.networks)
  os.chmod(workdir.path, 0o555)
  _no_training(monkeypatch)
  try:
    with pytest.raises(workdir_lib.WorkdirError, match=r"cannot write in workdir .*make it writable"):
      trainer.train_and_evaluate(_config(), workdir.path)
  finally:
    os.chmod(workdir.path, 0o755)


def test_undecodable_workdir_files_are_named(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  with open(workdir.config, "wb") as f:
    f.write(b"\xff\xfe garbage")
  with pytest.raises(workdir_lib.WorkdirError, match=rf"{workdir.config} is not valid JSON .*restore it"):
    trainer.train_and_evaluate(_config(), workdir.path)
  count = len(open(workdir.log, encoding="utf-8").readlines())
  with open(workdir.log, "ab") as f:  # undecodable bytes: a line that is still JSON stays, others go
    f.write(b'{"event": "train", "step": 1, "x": "\xff"}\n\xff\xfe\n')
  results.RunLog(workdir.log, resume_step=4).close()
  lines = [json.loads(line) for line in open(workdir.log, encoding="utf-8")]
  assert len(lines) == count + 1 and lines[-1]["x"] == "\ufffd"
  with pytest.raises(workdir_lib.WorkdirError, match=rf"cannot write {workdir.results}: it is a directory"):
    workdir_lib.write_json(workdir.results, {})
  os.remove(workdir.networks)
  os.makedirs(workdir.networks)
  with pytest.raises(workdir_lib.WorkdirError, match=rf"{workdir.networks} is a directory where a JSON file"):
    finish.finish(_config(), workdir.path)


def test_unreadable_results_files_are_named(finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  with open(workdir.table("val"), "wb") as f:
    f.write(b"\xff\xfe,garbage\n")
  with pytest.raises(workdir_lib.WorkdirError, match=rf"{workdir.table('val')} cannot be read \(UnicodeDecodeError"):
    workdir_lib.load_study(workdir)
  with open(workdir.examples("test"), "wb") as f:
    f.write(b"PK\x03\x04 cut short")
  with pytest.raises(workdir_lib.WorkdirError, match=rf"{workdir.examples('test')} cannot be read .*rerun"):
    workdir.read_examples("test")
