"""One driver per sweep folder: two drivers on one sweep would train the same points into
the same checkpoint folders.

A local folder (or shared POSIX storage) is held by an exclusive `flock` on
`<sweep>/.lock`, which the operating system drops when the driver exits, crashes or is
killed. An object store (s3://, gs://, any pyarrow filesystem URI) has no locks, so there
the sweep is held by a *lease*, `<sweep>/lease.json`: the owner's id, host, pid and start
time, rewritten every HEARTBEAT_S by a daemon thread. A driver that dies stops beating; a
lease that does not change for STALE_HEARTBEATS beats is taken over by the next driver.
`SweepFolder.claim` (flops_fit/sweep_folder.py) is how a sweep takes it. Never imports ray.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path

from . import storage

LOCK_FILE = ".lock"
LEASE_FILE = "lease.json"
# The owner rewrites its lease this often (seconds). Each beat is one small PUT (about
# 8,600 a day, a few cents on S3); a driver killed on a URI sweep blocks a resume for
# STALE_HEARTBEATS x this. A test may set it lower in the driver's process: the lease
# records it, and a later driver judges the lease by the interval its owner promised.
HEARTBEAT_S = 10.0
# A lease unchanged for this many of its owner's beats is stale: its owner is dead (or cut
# off from the store for as long). Three beats leave room for a slow PUT or a GC pause.
STALE_HEARTBEATS = 3
# Taking a lease: write it, wait this long (seconds), read it back; the driver whose id is
# read back owns the sweep. Strong read-after-write consistency (S3 since 2020, GCS) makes
# every racer read the same last write, provided each racer's read -> write took less than
# this (pyarrow has no conditional PUT, If-None-Match, to do it in one request).
SETTLE_S = 2.0
# A racer whose last read of the lease and its own write were further apart than this
# share of SETTLE_S starts over: the read-back above is only decisive below SETTLE_S.
READ_TO_WRITE_SHARE = 0.5
# A store that slow this many times in a row is an error to report.
TAKE_ATTEMPTS = 5
# While a foreign lease is watched: re-read it this many times per beat of its owner.
POLLS_PER_BEAT = 2


class SweepClaim:
    """A sweep folder held by this process: a `flock` (local) or a lease (URI).

    `owner` is the lease's owner id (None for a local folder). `lost` is None while the
    claim holds; otherwise one line saying why it no longer does (another driver took the
    lease after this one's beats stopped reaching the store). Call `release()` when the
    sweep ends.
    """

    def __init__(self, handle=None, lease: _Lease | None = None):
        self._handle = handle
        self._lease = lease
        self.owner = lease.record["owner"] if lease is not None else None
        self._lost = None

    @property
    def lost(self) -> str | None:
        return self._lease.lost if self._lease is not None else self._lost

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops its flock
            self._handle = None
        if self._lease is not None:
            self._lease.release()
            self._lost = self._lease.lost
            self._lease = None


def claim(sweep_dir: str) -> SweepClaim:
    """Hold the sweep folder `sweep_dir` (which exists) for this process, or refuse with a
    RuntimeError naming the driver that holds it. A URI sweep may wait up to
    STALE_HEARTBEATS beats of a lease's owner to tell a dead owner from a live one."""
    if storage.is_uri(sweep_dir):
        lease = _Lease(sweep_dir)
        lease.take()
        return SweepClaim(lease=lease)
    return _flock(sweep_dir)


def _busy(sweep_dir: str, holder: str) -> RuntimeError:
    return RuntimeError(
        f"The sweep at {sweep_dir} is being run by another driver ({holder}). Wait for it to end "
        "(or stop it) before resuming this sweep, or pass another name to start a new one."
    )


def _flock(sweep_dir: str) -> SweepClaim:
    import fcntl

    path = Path(sweep_dir) / LOCK_FILE
    try:
        handle = open(path, "a+")
    except OSError as e:
        raise PermissionError(f"storage_path {sweep_dir} is not writable ({e}); pass a writable storage_path.") from e
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise _busy(sweep_dir, holder) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return SweepClaim(handle)


def holder_text(lease: dict | None) -> str:
    """'pid 12 on host-a, started 2026-01-02 03:04:05 UTC' from a lease's record."""
    if not isinstance(lease, dict):
        return f"an unreadable {LEASE_FILE}"
    return f"pid {lease.get('pid', '?')} on {lease.get('host', '?')}, started {lease.get('started', '?')}"


def _owner_beat_s(lease: dict | None) -> float:
    """The heartbeat interval a lease's owner promised (seconds); ours if it names none."""
    beat = lease.get("heartbeat_s") if isinstance(lease, dict) else None
    if isinstance(beat, (int, float)) and not isinstance(beat, bool) and math.isfinite(beat) and beat > 0:
        return float(beat)
    return HEARTBEAT_S


class _Lease:
    """`<sweep>/lease.json`, taken, kept fresh by a daemon thread, and deleted on release.

    Liveness is judged by watching the lease object change on this host's monotonic clock,
    never by comparing a time written on another host with this one's: clock skew between
    hosts cannot make a live owner look dead.
    """

    def __init__(self, sweep_dir: str):
        self.sweep_dir = sweep_dir
        self.folder = storage.Folder(sweep_dir)
        self.record = dict(owner=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(),
                           started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                           heartbeat_s=HEARTBEAT_S, beat=0)
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- reading and writing the object -----------------------------------------------------
    def _read(self) -> bytes | None:
        return self.folder.read_bytes(LEASE_FILE)  # None: released (perhaps while read)

    def _write(self) -> None:
        self.folder.put(LEASE_FILE, json.dumps(self.record).encode())  # a whole object replaced at once

    def _ours(self, raw: bytes | None) -> bool:
        return _parse(raw).get("owner") == self.record["owner"] if raw is not None else False

    # --- taking -------------------------------------------------------------------------------
    def take(self) -> None:
        for _ in range(TAKE_ATTEMPTS):
            read_at = self._wait_until_free()
            self._write()
            if time.monotonic() - read_at > READ_TO_WRITE_SHARE * SETTLE_S:
                continue  # too slow to be sure no racer wrote in between: look again
            time.sleep(SETTLE_S)
            raw = self._read()
            if self._ours(raw):
                self._thread = threading.Thread(target=self._beat, name="flops_fit-lease", daemon=True)
                self._thread.start()
                return
            if raw is not None:
                raise _busy(self.sweep_dir, holder_text(_parse(raw) or None))
        raise RuntimeError(
            f"The object store of {self.sweep_dir} answered too slowly to take {LEASE_FILE} safely (a "
            f"read and a write took over {READ_TO_WRITE_SHARE * SETTLE_S:g} s, {TAKE_ATTEMPTS} times); "
            "retry when it answers faster, or raise flops_fit.sweep_folder.SETTLE_S."
        )

    def _wait_until_free(self) -> float:
        """Block until the lease is absent or stale; the monotonic time of the read that
        showed it so. Refuses a lease that changes while it is watched (a live owner)."""
        while True:
            read_at = time.monotonic()
            first = self._read()
            if first is None or self._ours(first):  # ours: a write of this take() judged too slow
                return read_at
            owner = _parse(first) or None
            window = STALE_HEARTBEATS * _owner_beat_s(owner)
            print(f"{self.sweep_dir}: {LEASE_FILE} held by {holder_text(owner)}; taking it over if it "
                  f"is not renewed within {window:g} s.", file=sys.stderr, flush=True)
            deadline = read_at + window
            while True:
                time.sleep(max(0.0, min(window / (STALE_HEARTBEATS * POLLS_PER_BEAT),
                                        deadline - time.monotonic())))
                read_at = time.monotonic()
                now = self._read()
                if now is None:
                    break  # released while watched: take it
                if now != first:
                    raise _busy(self.sweep_dir, holder_text(_parse(now) or None))
                if read_at >= deadline:
                    return read_at  # unchanged for STALE_HEARTBEATS beats: its owner is gone

    # --- keeping ------------------------------------------------------------------------------
    def _beat(self) -> None:
        failed = False
        every = self.record["heartbeat_s"]
        due = time.monotonic() + every
        # At a fixed rate, not a fixed pause after each write: a slow store must not stretch
        # the interval that other drivers judge this lease by.
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due = max(due + every, time.monotonic())
            try:
                raw = self._read()
                if not self._ours(raw):
                    self.lost = (f"the sweep at {self.sweep_dir} was taken over by another driver "
                                 f"({holder_text(_parse(raw) or None)}) while this one was not heard from")
                    warnings.warn(self.lost, RuntimeWarning, stacklevel=1)
                    return
                self.record["beat"] += 1
                self._write()
                failed = False
            except OSError as e:
                # A store briefly out of reach: the next beat retries; another driver takes
                # over only after STALE_HEARTBEATS missed beats.
                if not failed:
                    warnings.warn(f"renewing {LEASE_FILE} of {self.sweep_dir} failed ({e}); retrying "
                                  f"every {self.record['heartbeat_s']:g} s", RuntimeWarning, stacklevel=1)
                failed = True

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost is not None:
            return  # another driver's lease now: not this one's to delete
        try:
            if self._ours(self._read()):
                self.folder.delete(LEASE_FILE)
        except OSError as e:
            # The sweep's outcome stands; the lease left behind goes stale and the next
            # driver takes it over after STALE_HEARTBEATS beats.
            warnings.warn(f"deleting {LEASE_FILE} of {self.sweep_dir} failed ({e}); the next driver "
                          f"takes it over in {STALE_HEARTBEATS * self.record['heartbeat_s']:g} s",
                          RuntimeWarning, stacklevel=2)


def _parse(raw: bytes | None) -> dict:
    try:
        value = json.loads(raw) if raw is not None else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}
