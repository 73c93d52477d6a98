"""A workdir belongs to one run at a time: a lock file in the workdir names its holder.

``WORKDIR/run.lock`` is created with ``O_CREAT | O_EXCL`` (atomic, also on NFS v3 and later), so
of two runs starting together exactly one creates it; it holds the holder's host, pid and start
time. A second run finds it and is refused in one line naming the holder, having written
nothing. A lock whose holder is gone does not block:

- on the holder's own host (same hostname, boot and pid namespace) the holder is gone when its
  pid is (or now belongs to a process that started at another time, or a zombie);
- on the same hostname after a reboot it is gone;
- from another host, where a pid means nothing, the holder refreshes the lock's modification
  time every ``HEARTBEAT_S`` from a background thread, and a lock not refreshed for
  ``STALE_AFTER_S`` counts as abandoned (a lost host, a killed job).

Why not ``fcntl.flock``: the kernel would drop it with its process, but on NFS it is emulated
with byte-range locks that some mounts (``nolock``, some Lustre and NFS servers) do not provide
or do not share between clients, a lost client's lock lingers until the server's lease
expires, and it says nothing about who holds it. A file with a heartbeat works on any shared
filesystem and lets the refusal name the holder.

A multi-process run is one run: process 0 takes the lock and every process learns the outcome
(:func:`hold_for_run`), so a refused run's other processes stop too instead of waiting for
process 0 in a collective.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Iterator

import numpy as np

LOCK_NAME = "run.lock"
# The live run refreshes its lock this often; a lock from another host not refreshed for
# STALE_AFTER_S is abandoned. The margin covers NFS attribute caching (up to 60 s by default),
# clock skew between hosts and a thread held up by a busy interpreter.
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
# Bytes of the refusal message that process 0 sends the other processes.
_MESSAGE_BYTES = 1024


class WorkdirLockError(RuntimeError):
  """The workdir cannot be taken for this run: another run holds it, or its lock cannot be
  written."""


@dataclasses.dataclass(frozen=True)
class Holder:
  """Who holds a lock: what a reader needs to tell whether that process still lives."""
  host: str
  pid: int
  since: float  # seconds since the epoch, when the lock was taken
  token: str  # this lock's own id (a new run's lock never has an old one's)
  boot_id: str = ""  # the host's boot: a pid of an earlier boot means nothing
  pid_namespace: str = ""  # containers on one host share its name but not their pids
  start_ticks: int | None = None  # the process's start time: tells a reused pid apart

  @classmethod
  def this_process(cls) -> Holder:
    return cls(host=socket.gethostname(), pid=os.getpid(), since=time.time(),
               token=uuid.uuid4().hex, boot_id=_boot_id(), pid_namespace=_pid_namespace(),
               start_ticks=_start_ticks(os.getpid()))

  def describe(self) -> str:
    since = datetime.datetime.fromtimestamp(self.since, datetime.timezone.utc)
    return f"host {self.host}, pid {self.pid}, since {since:%Y-%m-%d %H:%M:%S} UTC"


class WorkdirLock:
  """``WORKDIR/run.lock``, held from ``acquire`` to ``release`` (or as a context manager)."""

  def __init__(self, workdir: str, *, heartbeat_s: float = HEARTBEAT_S,
               stale_after_s: float = STALE_AFTER_S):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self._heartbeat_s = heartbeat_s
    self._stale_after_s = stale_after_s
    self._holder: Holder | None = None
    self._created_workdir = False
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> None:
    """Takes the lock, replacing an abandoned one; raises WorkdirLockError if a live run holds
    it (having written nothing)."""
    if not os.path.isdir(self.workdir):
      os.makedirs(self.workdir, exist_ok=True)
      self._created_workdir = True
    me = Holder.this_process()
    self._stop.clear()
    for _ in range(10):  # each pass either wins, refuses, or removes an abandoned lock
      if self._create(me):
        self._holder = me
        self._thread = threading.Thread(target=self._beat, name="amr_jax-workdir-lock",
                                        daemon=True)
        self._thread.start()
        return
      found = self._read()
      if found is None:  # released between our attempt and the read: try again
        continue
      holder, age, identity = found
      gone = self._gone(holder, age)
      if gone is None:
        self._forget_created_workdir()
        raise WorkdirLockError(self._refusal(holder, age))
      logging.warning("workdir %r: taking over the lock of a run that is gone (%s; %s)",
                      self.workdir, holder.describe() if holder else "an unreadable lock", gone)
      self._remove_abandoned(identity)
    raise WorkdirLockError(f"workdir {self.workdir!r}: could not take {self.path} (other runs "
                           "kept taking it); try again")

  def release(self) -> None:
    """Stops the heartbeat and removes the lock if it is still this run's."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if self._holder is not None:
      if self._still_ours():
        os.unlink(self.path)
      self._holder = None
    self._forget_created_workdir()

  # --- taking and reading the lock ---------------------------------------------------------

  def _create(self, me: Holder) -> bool:
    """Creates the lock file with ``me`` in it, atomically; False if it exists."""
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump(dataclasses.asdict(me), f)
      f.flush()
      os.fsync(f.fileno())
    return True

  def _read(self) -> tuple[Holder | None, float, tuple[int, bytes]] | None:
    """(holder or None if unreadable, seconds since its last heartbeat, its identity), or None
    if there is no lock. A lock being written right now reads as unreadable."""
    try:
      with open(self.path, "rb") as f:
        stat = os.fstat(f.fileno())
        content = f.read()
    except FileNotFoundError:
      return None
    try:
      holder = Holder(**json.loads(content))
    except (ValueError, TypeError):
      holder = None
    return holder, time.time() - stat.st_mtime, (stat.st_ino, content)

  def _gone(self, holder: Holder | None, age: float) -> str | None:
    """Why ``holder`` is gone, or None while it may be alive."""
    me = Holder.this_process()
    if holder is not None and holder.host == me.host:
      if holder.boot_id and me.boot_id and holder.boot_id != me.boot_id:
        return "its host has restarted since"
      if holder.boot_id == me.boot_id and holder.pid_namespace == me.pid_namespace:
        return None if _alive(holder.pid, holder.start_ticks) else "its process has ended"
    # Another host (or an unreadable lock): only the heartbeat tells.
    if age > self._stale_after_s:
      return f"no heartbeat for {age:.0f} s"
    return None

  def _refusal(self, holder: Holder | None, age: float) -> str:
    who = holder.describe() if holder else "a lock being written or unreadable"
    return (f"workdir {self.workdir!r} is in use by another run ({who}; last heartbeat "
            f"{max(age, 0):.0f} s ago): wait for it to end or use another --workdir (a lock "
            f"counts as abandoned once its process is gone, or, from another host, after "
            f"{self._stale_after_s:.0f} s without a heartbeat)")

  def _remove_abandoned(self, identity: tuple[int, bytes]) -> None:
    """Removes the lock if it is still the abandoned one read (same inode and contents).

    Two runs may find the same abandoned lock; the one that creates ``run.lock.break`` first
    removes it, and the other, finding either that breaker's new lock or no lock, decides
    again. Without it, a run that read the old lock could remove a new run's lock.
    """
    breaker = self.path + ".break"
    try:
      fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:  # a breaker that died in these few lines would block every later run
        if time.time() - os.stat(breaker).st_mtime > self._stale_after_s:
          os.unlink(breaker)
      except FileNotFoundError:
        pass
      time.sleep(0.1)
      return
    try:
      found = self._read()
      if found is not None and found[2] == identity:
        os.unlink(self.path)
    finally:
      os.close(fd)
      os.unlink(breaker)

  def _still_ours(self) -> bool:
    found = self._read()
    return (found is not None and found[0] is not None and self._holder is not None
            and found[0].token == self._holder.token)

  def _beat(self) -> None:
    """Refreshes the lock's modification time every ``heartbeat_s`` until released."""
    while not self._stop.wait(self._heartbeat_s):
      try:
        if not self._still_ours():
          logging.warning("workdir %r: the lock %s is no longer this run's (another run took "
                          "it over after %.0f s without a heartbeat?)", self.workdir, self.path,
                          self._stale_after_s)
          return
        os.utime(self.path)
      except OSError as e:  # a filesystem hiccup: try again at the next beat
        logging.warning("workdir %r: could not refresh %s: %s", self.workdir, self.path, e)

  def _forget_created_workdir(self) -> None:
    """Removes the workdir this lock created if nothing else was written into it."""
    if self._created_workdir:
      self._created_workdir = False
      with contextlib.suppress(OSError):  # not empty: the run wrote there
        os.rmdir(self.workdir)


@contextlib.contextmanager
def hold_for_run(workdir: str, **lock_options) -> Iterator[None]:
  """Holds ``workdir`` for the whole of a (possibly multi-process) run.

  Process 0 takes the lock; every process learns whether it did, and all of them raise the same
  WorkdirLockError when it did not. Released at exit, also on an exception.
  """
  import jax  # pylint: disable=g-import-not-at-top

  lock = WorkdirLock(workdir, **lock_options) if jax.process_index() == 0 else None
  error = ""
  if lock is not None:
    try:
      lock.acquire()
    except WorkdirLockError as e:
      error = str(e)
    except OSError as e:  # e.g. a read-only workdir: the other processes must hear of it too
      error = f"workdir {workdir!r}: cannot write the lock {lock.path}: {e}"
  if jax.process_count() > 1:
    error = _from_process_0(error)
  if error:
    raise WorkdirLockError(error)
  try:
    yield
  finally:
    if lock is not None:
      lock.release()


def _from_process_0(text: str) -> str:
  """Process 0's ``text`` on every process (a collective: every process must call it)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = np.zeros(_MESSAGE_BYTES, np.uint8)
  encoded = text.encode()[:_MESSAGE_BYTES]
  data[:len(encoded)] = np.frombuffer(encoded, np.uint8)
  received = np.asarray(multihost_utils.broadcast_one_to_all(data))
  return bytes(received).rstrip(b"\0").decode(errors="replace")


# --- telling whether a process lives -----------------------------------------------------------

def _alive(pid: int, start_ticks: int | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process: it exists
    pass
  stat = _proc_stat(pid)
  if stat is None:  # no /proc (not Linux): the pid is all there is
    return True
  state, ticks = stat
  return state != "Z" and (start_ticks is None or ticks == start_ticks)


def _proc_stat(pid: int) -> tuple[str, int] | None:
  """(state, start time in clock ticks after boot) from /proc/PID/stat, or None."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold ')'
  except (OSError, IndexError):
    return None
  return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)


def _start_ticks(pid: int) -> int | None:
  stat = _proc_stat(pid)
  return None if stat is None else stat[1]


def _boot_id() -> str:
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip()
  except OSError:
    return ""


def _pid_namespace() -> str:
  try:
    return os.readlink("/proc/self/ns/pid")
  except OSError:
    return ""
