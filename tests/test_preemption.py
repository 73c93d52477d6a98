"""Pre-emption of a multi-process run (two processes, jax.distributed on loopback, the tiny
config): SIGTERM to one host, later (or never) to the other; every process stops at the same
step, they save one checkpoint together, both exit 0, and the run resumes there bit-exact."""

import datetime
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from amr_jax import checkpointing
from tests.test_parallel import free_port, worker_env

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "preemption_worker.py"
NUM_PROCESSES = 2
DEADLINE_S = 300  # for any one wait: training to start, processes to exit
LONG_RUN = 1_000_000  # steps: only a pre-emption ends it


class Run:
  """The processes of one multi-process training run, their output in files, and a timeline
  of what happened to them (seconds since the run started)."""

  def __init__(self, tmp: Path, name: str, workdir: Path, steps: int):
    self.tmp, self.name, self.workdir = tmp, name, workdir
    self.start = time.time()
    self.timeline: list[tuple[float, str]] = []  # (seconds since launch, event)
    coordinator = f"127.0.0.1:{free_port()}"
    # C++ INFO logs on: JAX's preemption sync manager logs the SIGTERM and the agreed boundary.
    env = {**worker_env(1), "TF_CPP_MIN_LOG_LEVEL": "0"}
    self.procs = []
    for i in range(NUM_PROCESSES):
      with open(self.path(i, "out"), "w") as out, open(self.path(i, "err"), "w") as err:
        self.procs.append(subprocess.Popen(
            [sys.executable, str(WORKER), "train", str(self.path(i, "npz")), str(workdir),
             str(steps), coordinator, str(NUM_PROCESSES), str(i)],
            cwd=ROOT, env=env, stdout=out, stderr=err))
    self.returncodes: list[int | None] = [None] * NUM_PROCESSES

  def path(self, process: int, kind: str) -> Path:
    return self.tmp / f"{self.name}_p{process}.{kind}"

  def note(self, event: str) -> None:
    self.timeline.append((round(time.time() - self.start, 2), event))

  def output(self, process: int, kind: str = "out") -> str:
    return self.path(process, kind).read_text()

  def poll(self) -> None:
    for i, proc in enumerate(self.procs):
      if self.returncodes[i] is None and proc.poll() is not None:
        self.returncodes[i] = proc.returncode
        self.note(f"process {i} exited with status {proc.returncode}")

  def wait_until(self, condition, what: str) -> None:
    """Polls ``condition()`` (and the processes) until it holds; fails after DEADLINE_S or
    when a process ends first."""
    deadline = time.time() + DEADLINE_S
    while not condition():
      self.poll()
      failed = any(code not in (None, 0) for code in self.returncodes)
      if (failed or None not in self.returncodes) and not condition():  # it never will
        self.kill()
        pytest.fail(f"a process ended first: {what}\n{self.report()}")
      if time.time() > deadline:
        self.kill()
        pytest.fail(f"not within {DEADLINE_S} s: {what}\n{self.report()}")
      time.sleep(0.05)
    self.note(what)

  def training(self) -> bool:
    metrics = self.workdir / "metrics.jsonl"  # process 0 logs every step
    return metrics.exists() and bool(metrics.read_text().strip())

  def sigterm(self, process: int) -> None:
    self.poll()
    alive = self.returncodes[process] is None
    if alive:
      self.procs[process].send_signal(signal.SIGTERM)
    self.note(f"SIGTERM to process {process}" + ("" if alive else " (already exited)"))

  def wait_all(self) -> list[int]:
    self.wait_until(lambda: None not in self.returncodes, "all processes exited")
    return self.returncodes

  def kill(self) -> None:
    for proc in self.procs:
      if proc.poll() is None:
        proc.kill()

  def ended_at(self, process: int) -> int:
    match = re.search(r"ended at step (\d+)", self.output(process))
    assert match, self.report()
    return int(match.group(1))

  def events_from_logs(self) -> None:
    """Adds what the processes logged to the timeline: SIGTERM caught (JAX's C++ handler), the
    agreed boundary, a second notice the coordination service already had, training's end."""
    for i in range(NUM_PROCESSES):
      err = self.output(i, "err")
      for pattern in (r"SIGTERM caught", r"Preemption sync counter is set: \d+",
                      r"ALREADY_EXISTS"):
        # (not anchored: a log line may follow a progress bar's carriage return)
        for line in re.findall(rf"[IWE]\d{{4}} (\d\d:\d\d:\d\d\.\d+) [^\n]*?({pattern})", err):
          self.timeline.append((_seconds_since(line[0], self.start), f"process {i}: {line[1]}"))
      for step, at in re.findall(r"ended at step (\d+) at ([\d.]+)", self.output(i)):
        # train_and_evaluate returned: the checkpoint is written
        self.timeline.append((round(float(at) - self.start, 2),
                              f"process {i}: training returned at step {step}"))
    self.timeline.sort(key=lambda event: event[0])  # stable: same-time notes keep their order

  def report(self) -> str:
    tails = "\n".join(f"--- process {i} stdout/stderr:\n{self.output(i)[-1500:]}\n"
                      f"{self.output(i, 'err')[-1500:]}" for i in range(NUM_PROCESSES))
    return f"timeline {self.timeline}\n{tails}"

  def final_state(self, process: int = 0) -> dict[str, np.ndarray]:
    return dict(np.load(self.path(process, "npz")))


def _seconds_since(clock: str, start: float) -> float:
  """An absl log line's time of day (local time, the day ``start`` fell on) as seconds since
  ``start``."""
  logged = datetime.datetime.combine(datetime.date.fromtimestamp(start),
                                     datetime.time.fromisoformat(clock))
  return round(logged.timestamp() - start, 2)


def run_to_the_end(tmp: Path, name: str, workdir: Path, steps: int) -> Run:
  run = Run(tmp, name, workdir, steps)
  assert run.wait_all() == [0] * NUM_PROCESSES, run.report()
  return run


def differing_leaves(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
  assert a.keys() == b.keys()
  return [name for name in a if not np.array_equal(a[name], b[name])]


def checkpoint_steps(workdir: Path) -> list[int]:
  return checkpointing.Checkpointer(str(workdir / "checkpoints")).all_steps()


def preempt(tmp: Path, name: str, first: int, second_due) -> tuple[Run, int]:
  """A long run; SIGTERM to process ``first`` once it trains, then to the other once
  ``second_due(run, time_of_the_first)`` holds. Checks that both exit 0 having stopped at one
  step, with one checkpoint there; returns the run and that step."""
  workdir = tmp / name
  run = Run(tmp, name, workdir, LONG_RUN)
  run.wait_until(run.training, "training under way (metrics.jsonl written)")
  run.sigterm(first)
  first_sent = time.time()
  run.wait_until(lambda: second_due(run, first_sent), "second notice due")
  run.sigterm(1 - first)
  codes = run.wait_all()
  run.events_from_logs()
  print(f"\n{name} timeline (s since launch):\n" +
        "\n".join(f"  {t:7.2f}  {event}" for t, event in run.timeline))
  (tmp / f"{name}_timeline.json").write_text(json.dumps(run.timeline))
  assert codes == [0] * NUM_PROCESSES, run.report()
  stopped = {run.ended_at(i) for i in range(NUM_PROCESSES)}
  assert len(stopped) == 1, (stopped, run.report())
  step = stopped.pop()
  assert checkpoint_steps(workdir) == [step], run.report()  # one checkpoint, where they stopped
  assert 0 < step < LONG_RUN
  assert f"SIGTERM: saved the checkpoint at step {step}" in run.output(0)
  assert not differing_leaves(run.final_state(0), run.final_state(1))
  return run, step


@pytest.mark.equivalence
def test_sigterm_to_one_process_then_the_other_stops_both_at_one_step_and_resumes_bit_exact(
    tmp_path):
  run, step = preempt(tmp_path, "preempted", first=1,
                      second_due=lambda run, first_sent: time.time() > first_sent + 3)
  # Resumed to two steps past the checkpoint, against a run that was never interrupted.
  end = step + 2
  resumed = run_to_the_end(tmp_path, "resumed", run.workdir, end)
  assert all(resumed.ended_at(i) == end for i in range(NUM_PROCESSES))
  assert "resuming from the checkpoint at step" in resumed.output(0)
  assert checkpoint_steps(run.workdir) == [step, end]
  straight = run_to_the_end(tmp_path, "straight", tmp_path / "straight", end)
  assert not differing_leaves(resumed.final_state(), straight.final_state())  # bit-exact
  # Negative control: the state where the run stopped fails the same check, in the networks'
  # parameters (not only in the step counter).
  differ = differing_leaves(run.final_state(), straight.final_state())
  for network in (".generator[", ".discriminator[", ".probe["):
    assert any(name.startswith(network) for name in differ), differ


def test_sigterm_to_process_0_then_to_process_1_while_it_saves_or_exits(tmp_path):
  """The second notice lands after the agreed stop (process 0 has reported its save): the
  process still saves its part and exits 0 (JAX's handler absorbs the SIGTERM)."""
  preempt(tmp_path, "preempted_p0_first", first=0,
          second_due=lambda run, _: "SIGTERM: saved the checkpoint" in run.output(0))
