"""Stage 2's published ledger read back by stage 1 (engine.global_ledger)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chorus_lab.engine import LedgerPredictor, ResourceLedger
from chorus_lab.engine.global_ledger import GlobalLedgerTable, GlobalTablePredictor, MergedLedgerView
from chorus_lab.schema import AgentMessage
from chorus_lab.stage2 import LedgerRecord, resource_state

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def msg(sender: str, at: float, targets: list[str], **content) -> AgentMessage:
    return AgentMessage(sender, T0 + timedelta(seconds=at), "request", content, targets, "c", {}, message_id=f"{sender}-{at}")


def published(ledger: ResourceLedger, resource: str, at: float) -> dict:
    when = T0 + timedelta(seconds=at)
    return LedgerRecord(resource, resource_state(ledger, resource, when), when).to_dict()


def test_the_table_answers_what_the_requesters_partition_never_sees() -> None:
    fleet = ResourceLedger()  # what stage 2 sees: every message
    requester = ResourceLedger()  # partition of agent a: its request, never the steward's grant
    request = msg("a", 1, ["steward"], action="request_resource", resource="gpu", amount=2)
    for ledger in (fleet, requester):
        ledger.apply(msg("steward", 0, [], resource="gpu", capacity=2))
        ledger.apply(request)
    fleet.apply(msg("steward", 2, ["a"], action="grant", resource="gpu"))
    table = GlobalLedgerTable()
    assert table.apply(published(fleet, "gpu", 2))

    view = MergedLedgerView(requester, table)
    assert dict(requester.pending("gpu")) and not requester.holders("gpu")
    assert dict(view.holders("gpu")) == {"a": 2.0} and dict(view.pending("gpu")) == {}
    assert view.held_total("gpu") == 2.0 and view.capacity("gpu") == 2.0

    # News newer than the table's record comes from the partition's own ledger.
    requester.apply(msg("b", 3, ["steward"], action="request_resource", resource="gpu", amount=1))
    assert set(view.pending("gpu")) == {"b"} and [r.resource for r in view.waiting_for("b")] == ["gpu"]


def test_an_older_record_does_not_replace_a_newer_one() -> None:
    fleet = ResourceLedger()
    fleet.apply(msg("steward", 0, [], resource="gpu", capacity=4))
    table = GlobalLedgerTable()
    assert table.apply(published(fleet, "gpu", 5))
    assert not table.apply(published(fleet, "gpu", 4))
    assert table.entries["gpu"].timestamp == T0 + timedelta(seconds=5)


def test_a_full_resource_in_the_table_raises_the_predicted_risk() -> None:
    fleet, local = ResourceLedger(), ResourceLedger()
    fleet.apply(msg("steward", 0, [], resource="gpu", capacity=2))
    fleet.apply(msg("x", 1, ["steward"], action="request_resource", resource="gpu", amount=2))
    fleet.apply(msg("steward", 2, ["x"], action="grant", resource="gpu"))
    table = GlobalLedgerTable()
    request = msg("a", 3, ["steward"], action="request_resource", resource="gpu", amount=2)
    predictor = GlobalTablePredictor(LedgerPredictor(), table)
    alone = predictor.predict(request, local)  # empty table: the inner predictor, unchanged
    assert alone == LedgerPredictor().predict(request, local)
    table.apply(published(fleet, "gpu", 2))
    informed = predictor.predict(request, local)
    assert informed.risk > alone.risk + 0.3, (alone, informed)
