"""Stage 1's checkpoint format and the autoscaling policy (pure parts, no bus)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus_lab import processor
from chorus_lab.autoscale import ScaleDecider, ScalePolicy, Supervisor, desired_instances
from chorus_lab.bus import Record
from chorus_lab.processor import Checkpoint, checkpoint_records, latest_checkpoint

KEY = "stage1/g/agent-messages-raw/2"


def as_records(items: list[tuple[bytes, bytes, tuple]], start: int = 0) -> list[Record]:
    return [Record("chorus-snapshots", 2, start + i, key, value, 0, headers) for i, (key, value, headers) in enumerate(items)]


def checkpoint(generation: str, size: int = 10, raw_offset: int = 5) -> Checkpoint:
    state = {"stage1_version": 1, "blob": [f"{generation}-{i}" for i in range(size)]}
    return Checkpoint(partition=2, raw_offset=raw_offset, signals_offset=0, state=state, generation=generation)


def test_a_checkpoint_round_trips_through_its_records() -> None:
    written = checkpoint("g1")
    found = latest_checkpoint(as_records(checkpoint_records(KEY, written, instance_id="i")), KEY)
    assert found == written


def test_large_checkpoints_are_chunked_and_reassembled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processor, "_CHUNK_BYTES", 64)
    written = checkpoint("big", size=500)
    records = checkpoint_records(KEY, written, instance_id="i")
    assert len(records) > 3 and records[-1][0] == KEY.encode()
    assert latest_checkpoint(as_records(records), KEY) == written


def test_the_newest_complete_checkpoint_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processor, "_CHUNK_BYTES", 64)
    old = checkpoint_records(KEY, checkpoint("old", size=500, raw_offset=1), instance_id="i")
    new = checkpoint_records(KEY, checkpoint("new", size=5, raw_offset=9), instance_id="i")
    other = checkpoint_records("stage1/g/agent-messages-raw/8", checkpoint("other", raw_offset=99), instance_id="i")
    records = as_records(old + new + other)
    assert latest_checkpoint(records, KEY).generation == "new"
    # After compaction only the newest record per key is left: old chunk keys that the
    # new, shorter checkpoint did not overwrite survive, and must be ignored.
    newest: dict[bytes, Record] = {}
    for record in records:
        newest[record.key] = record
    compacted = sorted(newest.values(), key=lambda r: r.offset)
    found = latest_checkpoint(compacted, KEY)
    assert found is not None and (found.generation, found.raw_offset) == ("new", 9)


def test_a_checkpoint_with_a_missing_chunk_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processor, "_CHUNK_BYTES", 64)
    good = checkpoint_records(KEY, checkpoint("good", raw_offset=3), instance_id="i")
    broken = checkpoint_records(KEY, checkpoint("broken", size=300, raw_offset=7), instance_id="i")
    del broken[1]
    assert latest_checkpoint(as_records(good + broken), KEY).generation == "good"
    assert latest_checkpoint([], KEY) is None


# --------------------------------------------------------------------------- scaling


@settings(max_examples=200, deadline=None)
@given(lag=st.integers(0, 10**7), more=st.integers(0, 10**6), partitions=st.integers(1, 64), top=st.integers(1, 32), threshold=st.integers(1, 10**5))
def test_desired_instances_grows_with_lag_and_stays_within_bounds(lag: int, more: int, partitions: int, top: int, threshold: int) -> None:
    policy = ScalePolicy(max_instances=top, lag_threshold=threshold)
    low, high = desired_instances(lag, partitions, policy), desired_instances(lag + more, partitions, policy)
    assert 1 <= low <= high <= max(1, min(top, partitions))


def test_scaling_up_is_immediate_and_down_waits_for_the_cooldown() -> None:
    decider = ScaleDecider(ScalePolicy(max_instances=4, lag_threshold=100, cooldown_s=10))
    assert decider.next(current=1, lag=350, partitions=6, now=0) == 4
    assert decider.next(current=4, lag=0, partitions=6, now=1) == 4
    assert decider.next(current=4, lag=0, partitions=6, now=10) == 4
    assert decider.next(current=4, lag=0, partitions=6, now=11) == 3
    assert decider.next(current=3, lag=0, partitions=6, now=12) == 3  # one step per cooldown
    assert decider.next(current=3, lag=250, partitions=6, now=13) == 3  # asks for 3: the lull is over
    assert decider.next(current=3, lag=0, partitions=6, now=14) == 3
    assert decider.next(current=3, lag=0, partitions=6, now=24) == 2


def test_supervisor_starts_stops_and_restarts_processes() -> None:
    lag = {"value": 0}
    sleeper = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, lambda *a: exit(0)); time.sleep(60)"]
    reports: list[str] = []
    supervisor = Supervisor(lambda slot: sleeper, lambda: (lag["value"], 3), ScalePolicy(max_instances=5, lag_threshold=10, cooldown_s=0), report=reports.append)
    try:
        assert supervisor.tick(0) == 1
        lag["value"] = 100
        assert supervisor.tick(1) == 3  # capped by the partition count
        assert sorted(supervisor.children) == [0, 1, 2]
        supervisor.children[1].kill()
        supervisor.children[1].wait()
        lag["value"] = 0
        assert supervisor.tick(2) == 2  # slot 1 restarted, then the highest slot stopped
        assert sorted(supervisor.children) == [0, 1]
        assert any("exited" in line for line in reports)
    finally:
        stop = threading.Event()
        stop.set()
        supervisor.run(stop)  # stops every child
    assert supervisor.children == {}


def test_supervisor_keeps_running_children_when_lag_cannot_be_measured() -> None:
    def broken() -> tuple[int, int]:
        raise OSError("bus unreachable")

    supervisor = Supervisor(lambda slot: [sys.executable, "-c", "import time; time.sleep(60)"], broken, ScalePolicy(), report=lambda _: None)
    supervisor.children[0] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert supervisor.tick(time.monotonic()) == 1
    finally:
        supervisor.children[0].kill()
        supervisor.children[0].wait()
