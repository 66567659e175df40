"""The audit chain's checker over generated logs: any single tampering is found and named (pure)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chorus_lab.audit import START, Link, check_records, stamp_headers
from chorus_lab.bus import Record

LANES = ["stage1/p0", "stage1/p3", "stage2"]


def _log(plan: list[tuple[int, bytes]]) -> list[Record]:
    """A chained log of one partition: (lane index, value) per record, offsets 10, 11, …"""
    heads: dict[str, Link] = {}
    records = []
    for i, (lane_index, value) in enumerate(plan):
        lane = LANES[lane_index]
        link, headers = stamp_headers(heads.get(lane, START), lane, "audited", 2, b"k", value, 1000 + i)
        heads[lane] = link
        records.append(Record("audited", 2, 10 + i, b"k", value, 1000 + i, headers))
    return records


plans = st.lists(st.tuples(st.integers(0, len(LANES) - 1), st.binary(max_size=12)), min_size=2, max_size=30)


def _renumber(records: list[Record]) -> list[Record]:
    """Offsets as the log would show them after the change: increasing, in the new order."""
    return [r._replace(offset=10 + i) for i, r in enumerate(records)]


# Feature: real-time-data-flow, Property 13: For any processed event, it should be maintained in Kafka topics with configurable retention for complete audit trails
@settings(max_examples=200, deadline=None)
@given(plan=plans, data=st.data())
def test_any_single_change_to_an_audited_log_is_found_where_it_happened(plan: list[tuple[int, bytes]], data: st.DataObject) -> None:
    """An untouched log verifies; altering, deleting, duplicating or swapping one record is
    reported with the right kind at the first record where the chain breaks."""
    records = _log(plan)
    assert check_records(records)[0] is None
    change = data.draw(st.sampled_from(["alter", "delete", "duplicate", "swap"]))
    i = data.draw(st.integers(0, len(records) - 1))
    lane_of = [r.header("audit.lane") for r in records]
    if change == "alter":
        tampered = list(records)
        tampered[i] = records[i]._replace(value=(records[i].value or b"") + b"!")
        found = check_records(tampered)[0]
        assert found is not None and (found.kind, found.offset) == ("altered", records[i].offset)
    elif change == "delete":
        later = [j for j in range(i + 1, len(records)) if lane_of[j] == lane_of[i]]
        tampered = _renumber(records[:i] + records[i + 1 :])
        found = check_records(tampered)[0]
        previous_in_lane = any(lane_of[j] == lane_of[i] for j in range(i))
        if later and previous_in_lane:
            # The next record of the lane (now one offset earlier) shows the gap.
            assert found is not None and (found.kind, found.offset) == ("missing", 10 + later[0] - 1)
        else:
            # The lane's first or last record: nothing in the range links to it (see docs/history.md).
            assert found is None
    elif change == "duplicate":
        tampered = _renumber([*records, records[i]])
        found = check_records(tampered)[0]
        assert found is not None and (found.kind, found.offset) == ("duplicated", 10 + len(records))
    else:
        same_lane = [j for j in range(i + 1, len(records)) if lane_of[j] == lane_of[i]]
        if not same_lane:
            return
        j = same_lane[0]
        swapped = list(records)
        swapped[i], swapped[j] = records[j], records[i]
        found = check_records(_renumber(swapped))[0]
        previous_in_lane = any(lane_of[k] == lane_of[i] for k in range(i))
        if previous_in_lane:
            assert found is not None and (found.kind, found.offset) == ("reordered", 10 + i)
        else:
            # The lane starts in the range with a later record: the earlier one then comes after it.
            assert found is not None and found.kind == "reordered"
