"""The local spool: durable, bounded, ordered, one process at a time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chorus_lab.bus.spool import Spool, SpoolFullError, SpoolLockedError


def test_records_survive_a_reopen_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([("t", b"a", b"1", (("h", b"x"),)), ("t", b"b", b"2", ())])
    spool.append([("t", b"a", b"3", ())])
    spool.remove([2])
    spool.close()
    reopened = Spool(tmp_path)
    assert [(r.key, r.value, r.headers) for r in reopened.pending(10)] == [(b"a", b"1", (("h", b"x"),)), (b"a", b"3", ())]
    assert len(reopened) == 2
    assert reopened.size_bytes == len(b"a1hx") + len(b"a3")


def test_a_full_spool_refuses_instead_of_dropping(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_records=2)
    spool.append([("t", None, b"1", ())])
    with pytest.raises(SpoolFullError, match="is full .*the message was not accepted"):
        spool.append([("t", None, b"2", ()), ("t", None, b"3", ())])
    assert [r.value for r in spool.pending(10)] == [b"1"]
    spool.append([("t", None, b"2", ())])
    assert len(spool) == 2


def test_a_byte_bound_applies_too(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10)
    with pytest.raises(SpoolFullError):
        spool.append([("t", None, b"x" * 11, ())])


def test_pending_pages_after_a_sequence_number(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    seqs = spool.append([("t", None, str(i).encode(), ()) for i in range(5)])
    assert [r.value for r in spool.pending(2, after_seq=seqs[1])] == [b"2", b"3"]


def test_only_one_process_may_hold_a_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    code = f"from chorus_lab.bus.spool import Spool; Spool(__import__('pathlib').Path({str(tmp_path)!r}))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert other.returncode != 0
    assert "is in use by another process" in other.stderr
    spool.close()
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_a_second_handle_in_the_same_process_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(SpoolLockedError):
        Spool(tmp_path)
    spool.close()
