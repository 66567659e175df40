"""Stage 2's published ledger read back by stage 1 (engine.global_ledger)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chorus_lab.engine import LedgerPredictor, ResourceLedger
from chorus_lab.engine.content import parse_content
from chorus_lab.engine.global_ledger import GlobalLedgerTable, GlobalTablePredictor, LocalNews, MergedLedgerView
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


def full_gpu_table(at: float = 2.0) -> tuple[ResourceLedger, GlobalLedgerTable]:
    """Stage 2's view: x holds all of gpu (capacity 2) since t=1; published at ``at``."""
    fleet = ResourceLedger()
    fleet.apply(msg("steward", 0, [], resource="gpu", capacity=2))
    fleet.apply(msg("x", 0.5, ["steward"], action="request_resource", resource="gpu", amount=2))
    fleet.apply(msg("steward", 1, ["x"], action="grant", resource="gpu"))
    table = GlobalLedgerTable()
    table.apply(published(fleet, "gpu", at))
    return fleet, table


def test_a_release_seen_here_after_the_record_counts_at_once() -> None:
    _, table = full_gpu_table()
    local = ResourceLedger()  # x's partition: it never saw the steward's grant
    request = msg("a", 3.5, ["steward"], action="request_resource", resource="gpu", amount=1)
    stale = GlobalTablePredictor(LedgerPredictor(), table, use_news=False)
    fresh = GlobalTablePredictor(LedgerPredictor(), table)
    for predictor in (stale, fresh):
        predictor.predict(msg("x", 3, ["steward"], action="release", resource="gpu"), local)
        local.apply(msg("x", 3, ["steward"], action="release", resource="gpu"))
    assert stale.predict(request, local).risk > 0.9  # the table alone: x still holds all of it
    analysis = fresh.predict(request, local)
    assert analysis.risk < 0.1, analysis.reason  # x let go after the record: this partition saw it
    assert "fleet ledger" in analysis.reason and "behind" in analysis.reason


def test_a_denial_seen_here_removes_the_competitor() -> None:
    fleet = ResourceLedger()
    fleet.apply(msg("steward", 0, [], resource="gpu", capacity=2))
    fleet.apply(msg("b", 1, ["steward"], action="request_resource", resource="gpu", amount=2))
    table = GlobalLedgerTable()
    table.apply(published(fleet, "gpu", 1))
    steward_partition = ResourceLedger()
    predictor = GlobalTablePredictor(LedgerPredictor(), table)
    request = msg("a", 2.5, ["steward"], action="request_resource", resource="gpu", amount=1)
    before = predictor.predict(request, steward_partition)
    deny = msg("steward", 2, ["b"], action="deny", resource="gpu")
    predictor.predict(deny, steward_partition)
    steward_partition.apply(deny)
    after = predictor.predict(request, steward_partition)
    assert "b" in before.competing_agents and "b" not in after.competing_agents
    assert after.risk < before.risk


def test_each_partition_keeps_its_own_news() -> None:
    _, table = full_gpu_table()
    predictor = GlobalTablePredictor(LedgerPredictor(), table)
    mine, other = ResourceLedger(), ResourceLedger()
    predictor.predict(msg("x", 3, ["steward"], action="release", resource="gpu"), mine)
    request = msg("a", 3.5, ["steward"], action="request_resource", resource="gpu", amount=1)
    assert predictor.predict(request, mine).risk < 0.1
    assert predictor.predict(request, other).risk > 0.9  # another instance never saw the release


def test_the_view_replays_news_on_the_record_as_the_ledger_would() -> None:
    # One partition that sees every message after the record: replayed news gives the fleet's state.
    fleet, table = full_gpu_table(at=1)
    news = LocalNews()
    local = ResourceLedger()
    later = [
        msg("x", 2, ["steward"], action="release", resource="gpu", amount=1),
        msg("b", 3, ["steward"], action="request_resource", resource="gpu", amount=1, priority=7),
        msg("c", 4, ["steward"], action="request_resource", resource="gpu", amount=1),
        msg("steward", 5, ["b"], action="grant", resource="gpu"),
        msg("steward", 6, ["c"], action="deny", resource="gpu"),
    ]
    for m in later:
        facts, _ = parse_content(m.content)
        news.record(m, facts, local, local.config)
        fleet.apply(m)
    view = MergedLedgerView(local, table, news)
    assert dict(view.holders("gpu")) == dict(fleet.holders("gpu")) == {"x": 1.0, "b": 1.0}
    assert dict(view.pending("gpu")) == dict(fleet.pending("gpu")) == {}


def test_the_record_is_carried_forward_to_the_request() -> None:
    _, table = full_gpu_table(at=2)
    local = ResourceLedger()
    request = msg("a", 3, ["steward"], action="request_resource", resource="gpu", amount=1)
    predictor = GlobalTablePredictor(LedgerPredictor(), table)
    assert predictor.predict(request, local).risk > 0.9  # too few hold durations seen: not aged
    for _ in range(50):  # the fleet's holds last 1.5 s; x has held for 1 s at the record, 2 s at the request
        table.holds.add(1.5)
    view = MergedLedgerView(local, table, LocalNews(), now=T0 + timedelta(seconds=3))
    assert view.held_total("gpu") == 0.0
    assert predictor.predict(request, local).risk < 0.1
    assert MergedLedgerView(local, table, LocalNews(), now=T0 + timedelta(seconds=2)).held_total("gpu") == 2.0  # as of the record
    # A newer record of another resource: had x released gpu by then, gpu would have a newer
    # record too. Only 0.1 s is unknown, and no hold of the fleet lasted 1.9 s: nothing to discount.
    other = ResourceLedger()
    other.apply(msg("steward", 0, [], resource="cpu", capacity=1))
    table.apply(published(other, "cpu", 2.9))
    assert MergedLedgerView(local, table, LocalNews(), now=T0 + timedelta(seconds=3)).held_total("gpu") == 2.0


def test_requests_pending_longer_than_stewards_take_are_counted_answered() -> None:
    fleet = ResourceLedger()
    fleet.apply(msg("steward", 0, [], resource="gpu", capacity=2))
    fleet.apply(msg("b", 1.0, ["steward"], action="request_resource", resource="gpu", amount=2))
    table = GlobalLedgerTable()
    table.apply(published(fleet, "gpu", 1.0))
    for _ in range(50):  # stewards answer within 0.2 s
        table.answers.add(0.2)
    local = ResourceLedger()
    soon = MergedLedgerView(local, table, LocalNews(), now=T0 + timedelta(seconds=1.1))
    assert set(soon.pending("gpu")) == {"b"} and soon.held_total("gpu") == 0.0  # not due yet
    late = MergedLedgerView(local, table, LocalNews(), now=T0 + timedelta(seconds=1.5))
    assert dict(late.pending("gpu")) == {} and dict(late.holders("gpu")) == {"b": 2.0}  # it fitted: granted
