"""One driver per sweep folder in object storage: the lease (flops_fit/lease.py, taken by
SweepFolder.claim),
against a local S3 server (fixture s3_server). No Ray."""

import json
import os
import socket
import threading
import time

import pytest

from flops_fit import lease
from flops_fit.sweep_folder import SweepFolder
from flops_fit.task import Task
from test_results import make_plan, no_data, no_loss, no_model

BEAT_S = 0.5  # a short heartbeat: a stale lease is judged in 1.5 s, and a busy machine still beats in time
SETTLE_S = 1.5  # the local S3 server on a busy 2-core machine answers a read and a write within half of this


@pytest.fixture
def fast_lease(monkeypatch):
    monkeypatch.setattr(lease, "HEARTBEAT_S", BEAT_S)
    monkeypatch.setattr(lease, "SETTLE_S", SETTLE_S)


@pytest.fixture
def bucket(s3_server):
    return s3_server.bucket("leases")


@pytest.fixture
def task():
    return Task(no_model, no_data, no_loss, tokens_per_sample=128, batch_size=4, lr=2e-3)


def lease_of(s3_server, sweep: str) -> dict | None:
    key = sweep.split("/", 3)[3] + "/" + lease.LEASE_FILE
    if key not in s3_server.keys("leases", key):
        return None
    return json.loads(s3_server.client().get_object(Bucket="leases", Key=key)["Body"].read())


def put_lease(s3_server, sweep: str, record: dict) -> None:
    key = sweep.split("/", 3)[3] + "/" + lease.LEASE_FILE
    s3_server.client().put_object(Bucket="leases", Key=key, Body=json.dumps(record).encode())


def foreign(beat: int = 0, heartbeat_s: float = BEAT_S) -> dict:
    return dict(owner="f" * 32, host="node-elsewhere", pid=4242, started="2001-02-03 04:05:06 UTC",
                heartbeat_s=heartbeat_s, beat=beat)


def test_a_second_driver_on_a_live_object_store_sweep_is_refused(s3_server, bucket, fast_lease, task):
    sweep = f"{bucket}/runs/live"
    plan = make_plan()
    first = SweepFolder(sweep).claim(plan, task)
    try:
        held = lease_of(s3_server, sweep)
        assert (held["host"], held["pid"]) == (socket.gethostname(), os.getpid())
        with pytest.raises(RuntimeError, match="being run by another driver") as e:
            SweepFolder(sweep).claim(plan, task)
        message = str(e.value)
        assert f"pid {os.getpid()} on {socket.gethostname()}, started {held['started']}" in message
        assert "another name" in message and "\n" not in message
        assert lease_of(s3_server, sweep)["owner"] == held["owner"]  # the refused one took nothing
    finally:
        first.release()
    assert lease_of(s3_server, sweep) is None  # release deletes the lease
    SweepFolder(sweep).claim(plan, task).release()  # and the sweep is free at once


def test_a_lease_whose_heartbeat_stopped_is_taken_over(s3_server, bucket, fast_lease):
    sweep = f"{bucket}/runs/stale"
    put_lease(s3_server, sweep, foreign())  # a driver killed after writing its lease
    started = time.monotonic()
    claim = lease.claim(sweep)
    try:
        waited = time.monotonic() - started
        assert waited >= lease.STALE_HEARTBEATS * BEAT_S  # watched its owner's beats first
        assert lease_of(s3_server, sweep)["pid"] == os.getpid()
        beat = lease_of(s3_server, sweep)["beat"]
        time.sleep(3 * BEAT_S)
        assert lease_of(s3_server, sweep)["beat"] > beat  # and keeps it fresh
    finally:
        claim.release()
    assert lease_of(s3_server, sweep) is None


def test_an_owner_that_keeps_beating_is_live_whatever_its_clock_says(s3_server, bucket, fast_lease):
    # Its recorded times are decades old (a skewed clock): what counts is that the object
    # keeps changing, seen on this host's clock.
    sweep = f"{bucket}/runs/skewed"
    stop = threading.Event()

    def beat():
        n = 0
        while not stop.is_set():
            put_lease(s3_server, sweep, foreign(beat=n) | {"heartbeat_at": 0.0})
            n += 1
            stop.wait(BEAT_S)

    owner = threading.Thread(target=beat)
    owner.start()
    try:
        with pytest.raises(RuntimeError, match="pid 4242 on node-elsewhere, started 2001-02-03 04:05:06 UTC"):
            lease.claim(sweep)
    finally:
        stop.set()
        owner.join()
    assert lease_of(s3_server, sweep)["owner"] == "f" * 32


def test_two_drivers_racing_for_one_sweep_end_with_one_owner(s3_server, bucket, fast_lease):
    for round_ in range(2):
        sweep = f"{bucket}/runs/race-{round_}"
        start = threading.Barrier(2)
        claims, refusals = [], []

        def take():
            start.wait()
            try:
                claims.append(lease.claim(sweep))
            except RuntimeError as e:
                refusals.append(str(e))

        racers = [threading.Thread(target=take) for _ in range(2)]
        for r in racers:
            r.start()
        for r in racers:
            r.join()
        try:
            assert (len(claims), len(refusals)) == (1, 1), refusals
            assert "being run by another driver" in refusals[0]
            assert lease_of(s3_server, sweep)["owner"] == claims[0].owner
        finally:
            for c in claims:
                c.release()


def test_an_owner_whose_lease_was_taken_notices_and_leaves_it(s3_server, bucket, fast_lease):
    sweep = f"{bucket}/runs/taken"
    claim = lease.claim(sweep)
    put_lease(s3_server, sweep, foreign(heartbeat_s=60.0))  # another driver took it over
    with pytest.warns(RuntimeWarning, match="taken over by another driver"):
        deadline = time.monotonic() + 20 * BEAT_S
        while claim.lost is None and time.monotonic() < deadline:
            time.sleep(BEAT_S / 2)
        claim.release()
    assert claim.lost is not None
    assert lease_of(s3_server, sweep)["owner"] == "f" * 32  # release left the new owner's lease
