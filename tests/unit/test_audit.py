"""The audit chain: hashing, stamping with commit/abort, and finding the head after a restart."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from chorus_lab.audit import GENESIS, START, AuditStamper, Link, check_records, last_link, link_hash, link_of, verify
from chorus_lab.bus import TopicPartition, TopicSpec, open_bus


def test_every_field_is_part_of_the_hash() -> None:
    base = ("0" * 64, "L", 1, "t", 0, b"k", b"v", 5)
    reference = link_hash(*base)
    for index, other in enumerate(["1" * 64, "M", 2, "u", 1, b"K", b"V", 6]):
        changed = list(base)
        changed[index] = other
        assert link_hash(*changed) != reference, index
    # A missing key is not an empty key.
    assert link_hash("0" * 64, "L", 1, "t", 0, None, b"v", 5) != link_hash("0" * 64, "L", 1, "t", 0, b"", b"v", 5)


def _bus(tmp_path: Path):
    bus = open_bus(f"embedded://{tmp_path}/bus")
    bus.admin().create_topics([TopicSpec("audited", partitions=2)])
    return bus


def _write(bus, stamper: AuditStamper, values: list[bytes], *, commit: bool, lane: str = "w1") -> None:
    producer = bus.producer(transactional_id=f"writer-{lane}")
    producer.init_transactions()
    producer.begin_transaction()
    now_ms = int(time.time() * 1000)  # a 1970 timestamp would be deleted by retention at once
    for value in values:
        headers = stamper.stamp("audited", b"agent-1", value, now_ms, lane=lane)
        producer.produce("audited", value, b"agent-1", headers=headers, timestamp_ms=now_ms)
    if commit:
        producer.commit_transaction()
        stamper.commit()
    else:
        producer.abort_transaction()
        stamper.abort()
    producer.close()


def test_heads_advance_only_when_the_transaction_commits(tmp_path: Path) -> None:
    bus = _bus(tmp_path)
    stamper = AuditStamper(bus)
    _write(bus, stamper, [b"a", b"b"], commit=True)
    _write(bus, stamper, [b"lost"], commit=False)
    _write(bus, stamper, [b"c"], commit=True)
    reports = verify(bus, ["audited"])
    assert all(r.ok for r in reports), [str(r.finding) for r in reports]
    assert [r.heads.get("w1") for r in reports if r.records] == [Link(3, reports[stamper.partition("audited", b"agent-1")].heads["w1"].hash)]
    stamper.close()


def test_a_new_writer_continues_the_chain_from_the_log(tmp_path: Path) -> None:
    bus = _bus(tmp_path)
    first = AuditStamper(bus)
    _write(bus, first, [b"a", b"b"], commit=True)
    _write(bus, first, [b"other lane"], commit=True, lane="w2")
    first.close()
    second = AuditStamper(bus)  # a restarted instance: no heads in memory
    _write(bus, second, [b"c"], commit=True)
    partition = second.partition("audited", b"agent-1")
    consumer = bus.consumer(None)
    assert last_link(consumer, TopicPartition("audited", partition), "w1").seq == 3
    assert last_link(consumer, TopicPartition("audited", partition), "nobody") == START
    consumer.close()
    assert all(r.ok for r in verify(bus, ["audited"]))
    second.close()


def test_forget_rereads_a_lane_another_instance_extended(tmp_path: Path) -> None:
    bus = _bus(tmp_path)
    mine, theirs = AuditStamper(bus), AuditStamper(bus)
    _write(bus, mine, [b"a"], commit=True)
    _write(bus, theirs, [b"b"], commit=True)  # the partition moved to another instance
    mine.forget("w1")  # and came back
    _write(bus, mine, [b"c"], commit=True)
    assert all(r.ok for r in verify(bus, ["audited"]))
    mine.close()
    theirs.close()


def test_verify_names_a_missing_topic_or_partition(tmp_path: Path) -> None:
    bus = _bus(tmp_path)
    with pytest.raises(Exception, match="nope does not exist"):
        verify(bus, ["nope"])
    with pytest.raises(Exception, match="no partition 7"):
        verify(bus, ["audited"], partition=7)


def test_records_without_audit_headers_are_unstamped() -> None:
    from chorus_lab.bus import Record

    record = Record("t", 0, 4, b"k", b"v", 1)
    assert link_of(record) is None
    found, _ = check_records([record])
    assert found is not None and found.kind == "unstamped" and found.offset == 4
    assert check_records([record], allow_unstamped=True)[0] is None
    assert GENESIS == "0" * 64
