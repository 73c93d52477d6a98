"""A workdir belongs to one run at a time: a live run's lock refuses a second run, in one line and
writing nothing; a dead run's lock (kill -9 here, a lost host elsewhere) does not."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from amr_jax import evaluate
from amr_jax import train
from amr_jax import workdir_lock
from amr_jax.workdir_lock import Holder, WorkdirLock, WorkdirLockError
from experiments.configs import tiny
from tests import children
from tests.test_cli import ROOT

# A process that takes the lock of argv[1] and holds it (heartbeat and all) until killed.
HOLD = """
import sys, time
from amr_jax.workdir_lock import WorkdirLock
WorkdirLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def start_holder(workdir):
  proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], cwd=ROOT,
                          env=children.env(), stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def listing(workdir):
  """Every file under workdir with its size, modification time and (for the lock) contents."""
  return {str(p.relative_to(workdir)): (p.stat().st_size, p.stat().st_mtime_ns,
                                        p.read_text() if p.name == "run.lock" else None)
          for p in sorted(workdir.rglob("*"))}


def tiny_config(steps=2):
  config = tiny.get_config()
  config.num_train_steps = config.eval_every = config.checkpoint_every = steps
  return config


def write_lock(workdir, age_s, **fields):
  """A lock file as another run would leave it, last refreshed ``age_s`` seconds ago."""
  holder = dict(host="node-elsewhere", pid=os.getpid(), since=time.time() - age_s - 60,
                token="theirs", boot_id="", pid_namespace="", start_ticks=None)
  holder.update(fields)
  path = workdir / workdir_lock.LOCK_NAME
  path.write_text(json.dumps(holder))
  os.utime(path, (time.time() - age_s,) * 2)
  return path


# --- through the real command line and train_and_evaluate -----------------------------------

def test_a_live_holder_refuses_a_second_run_in_one_line_and_nothing_is_written(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("a file of the run that holds it")
  holder = start_holder(workdir)
  try:
    before = listing(workdir)
    result = subprocess.run(
        [sys.executable, "-m", "amr_jax.main", "--config=experiments/configs/tiny.py",
         f"--workdir={workdir}", f"--compilation_cache={children.XLA_CACHE}"],
        cwd=ROOT, env=children.env(), capture_output=True, text=True, timeout=600)
    assert listing(workdir) == before
  finally:
    holder.kill()
    holder.wait()
  assert result.returncode == 2, result.stderr[-3000:]
  (line,) = [line for line in result.stderr.splitlines() if "error" in line.lower()]
  assert line.startswith(f"error: workdir {str(workdir)!r} is in use by another run (host "
                         f"{socket.gethostname()}, pid {holder.pid}, since "), line


def test_a_killed_holder_does_not_block_and_evaluation_needs_no_lock(tmp_path):
  workdir = tmp_path / "run"
  holder = start_holder(workdir)
  with pytest.raises(WorkdirLockError, match=f"pid {holder.pid}, since"):  # the control
    train.train_and_evaluate(tiny_config(), str(workdir))
  assert sorted(os.listdir(workdir)) == ["run.lock"]
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  assert (workdir / "run.lock").exists()  # left behind, naming a process that is gone
  _, summary = train.train_and_evaluate(tiny_config(), str(workdir))
  assert summary["step"] == 2
  assert not (workdir / "run.lock").exists()  # released at the end of the run

  # Evaluating a checkpoint reads the workdir: it runs beside a live run.
  holder = start_holder(workdir)
  try:
    result = evaluate.evaluate_checkpoint(tiny_config(), str(workdir), ["reconstruction"])
  finally:
    holder.kill()
    holder.wait()
  assert result["step"] == 2 and len(result) > 1  # a metric besides the step


def test_a_training_run_holds_its_workdir_and_releases_it_at_sigterm(tmp_path):
  workdir = tmp_path / "run"
  common = ["--config=experiments/configs/tiny.py", f"--workdir={workdir}",
            f"--compilation_cache={children.XLA_CACHE}"]
  first = subprocess.Popen(
      [sys.executable, "-m", "amr_jax.main", *common, "--config.num_train_steps=100000",
       "--config.checkpoint_every=100000", "--config.eval_every=100000", "--config.log_every=1"],
      cwd=ROOT, env=children.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
      time.sleep(0.1)
    second = subprocess.run([sys.executable, "-m", "amr_jax.main", *common], cwd=ROOT,
                            env=children.env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"pid {first.pid}, since" in second.stderr
  finally:
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=300)
  assert first.returncode == 0, err[-3000:]
  assert "SIGTERM: saved the checkpoint" in out
  assert not (workdir / "run.lock").exists()


def test_a_failing_run_releases_the_lock_and_the_workdir_it_created(tmp_path, monkeypatch):
  def fail(*args):
    raise RuntimeError("set-up failed")

  monkeypatch.setattr(train, "set_up", fail)
  with pytest.raises(RuntimeError, match="set-up failed"):
    train.train_and_evaluate(tiny_config(), str(tmp_path / "new"))
  assert not (tmp_path / "new").exists()
  with pytest.raises(RuntimeError, match="set-up failed"):
    train.train_and_evaluate(tiny_config(), str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_the_processes_of_a_refused_multi_process_run_all_exit(tmp_path):
  """Process 0 finds the lock held; process 1, which does not look, hears it from process 0
  and exits too rather than waiting for process 0 in the first collective."""
  workdir = tmp_path / "run"
  holder = start_holder(workdir)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  try:
    procs = [subprocess.Popen(
        [sys.executable, "-m", "amr_jax.main", "--config=experiments/configs/tiny.py",
         f"--workdir={workdir}", f"--compilation_cache={children.XLA_CACHE}",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=ROOT, env=children.env(JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [proc.communicate(timeout=300) for proc in procs]  # a generous deadline
  finally:
    for proc in procs:
      proc.kill()
    holder.kill()
    holder.wait()
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 2, err[-3000:]
    assert f"is in use by another run (host {socket.gethostname()}, pid {holder.pid}" in err
  assert sorted(os.listdir(workdir)) == ["run.lock"]


# --- the lock itself --------------------------------------------------------------------------

@pytest.mark.parametrize("age_s, refused", [(workdir_lock.STALE_AFTER_S + 60, False), (5, True)])
def test_another_hosts_lock_blocks_until_its_heartbeat_is_stale(tmp_path, age_s, refused):
  """On another host a pid means nothing (this one is alive here): only the heartbeat tells."""
  path = write_lock(tmp_path, age_s)
  lock = WorkdirLock(str(tmp_path))
  if refused:
    content = path.read_text()
    with pytest.raises(WorkdirLockError, match=r"host node-elsewhere, pid \d+, since .* UTC; "
                                                r"last heartbeat [56] s ago"):
      lock.acquire()
    assert path.read_text() == content and os.listdir(tmp_path) == ["run.lock"]
  else:
    lock.acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert json.loads(path.read_text())["host"] == socket.gethostname()
    lock.release()
    assert not path.exists()


@pytest.mark.parametrize("change, refused", [
    ({}, True),  # this very process
    ({"start_ticks": 1}, False),  # its pid, reused by a process that started at another time
    ({"boot_id": "an-earlier-boot"}, False),  # the host has restarted since
    ({"pid_namespace": "pid:[1]"}, True),  # another container: a fresh heartbeat tells
])
def test_a_lock_from_this_host_is_free_once_its_process_is_gone(tmp_path, change, refused):
  me = Holder.this_process()
  write_lock(tmp_path, 0, **{**vars(me), **change})
  lock = WorkdirLock(str(tmp_path))
  if refused:
    with pytest.raises(WorkdirLockError, match=f"pid {me.pid}"):
      lock.acquire()
  else:
    lock.acquire()
    lock.release()


def test_the_heartbeat_keeps_a_live_lock_fresh(tmp_path):
  lock = WorkdirLock(str(tmp_path), heartbeat_s=0.05)
  lock.acquire()
  old = time.time() - 1000
  os.utime(lock.path, (old, old))
  deadline = time.time() + 60
  while time.time() < deadline and os.stat(lock.path).st_mtime < old + 500:
    time.sleep(0.05)
  assert os.stat(lock.path).st_mtime > old + 500  # refreshed: another host sees it alive
  lock.release()
  assert not os.path.exists(lock.path)


@pytest.mark.parametrize("stale_lock", [False, True])
def test_of_runs_starting_together_exactly_one_wins(tmp_path, stale_lock):
  for attempt in range(30):
    workdir = tmp_path / str(attempt)
    workdir.mkdir()
    if stale_lock:  # all of them find a dead run's lock and try to replace it
      write_lock(workdir, workdir_lock.STALE_AFTER_S + 60)
    locks = [WorkdirLock(str(workdir)) for _ in range(8)]
    start = threading.Barrier(len(locks))
    won = []

    def run(lock):
      start.wait()
      try:
        lock.acquire()
        won.append(lock)
      except WorkdirLockError:
        pass

    threads = [threading.Thread(target=run, args=(lock,)) for lock in locks]
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()
    assert len(won) == 1
    assert json.loads((workdir / "run.lock").read_text())["token"] == won[0]._holder.token
    won[0].release()
    assert os.listdir(workdir) == []
