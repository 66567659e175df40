"""Property 4 (conflict prediction across partitions): the lagging fleet table plus a partition's news."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from chorus_lab.engine import LedgerPredictor, ResourceLedger
from chorus_lab.engine.content import parse_content
from chorus_lab.engine.global_ledger import GlobalLedgerTable, GlobalTablePredictor, LocalNews, MergedLedgerView
from chorus_lab.schema import AgentMessage
from chorus_lab.stage2 import LedgerRecord, resource_state

T0 = datetime(2026, 1, 1, tzinfo=UTC)
AGENTS = ("a", "b", "c", "d")
RESOURCES = ("gpu", "db")

step = st.tuples(
    st.sampled_from(["request_resource", "grant", "deny", "release", "hold"]),
    st.sampled_from(AGENTS),
    st.sampled_from(RESOURCES),
    st.one_of(st.none(), st.integers(1, 3)),
)


def message(i: int, action: str, agent: str, resource: str, amount: int | None) -> AgentMessage:
    content: dict = {"action": action, "resource": resource}
    if amount is not None:
        content["amount"] = amount
    if action in ("grant", "deny"):  # the steward answers the agent
        return AgentMessage(f"s-{resource}", T0 + timedelta(seconds=i), "response", content, [agent], "c", {}, message_id=f"m{i}")
    if action == "hold" and amount is None:
        content["amount"] = 1
    return AgentMessage(agent, T0 + timedelta(seconds=i), "request", content, [f"s-{resource}"], "c", {}, message_id=f"m{i}")


# Feature: real-time-data-flow, Property 4: Stream processing pipeline integration
@settings(max_examples=100, deadline=None)
@given(st.lists(step, max_size=25), st.lists(step, max_size=25))
def test_news_replayed_on_the_record_gives_the_fleets_ledger(before: list, after: list) -> None:
    """A partition that saw everything after the table's records sees the fleet's state exactly."""
    fleet = ResourceLedger()
    for resource in RESOURCES:
        fleet.apply(AgentMessage(f"s-{resource}", T0, "broadcast", {"resource": resource, "capacity": 3}, [], "c", {}, message_id=f"cap-{resource}"))
    for i, spec in enumerate(before, start=1):
        fleet.apply(message(i, *spec))
    record_at = T0 + timedelta(seconds=len(before) + 0.5)
    table = GlobalLedgerTable()
    for resource in RESOURCES:
        table.apply(LedgerRecord(resource, resource_state(fleet, resource, record_at), record_at).to_dict())
    local, news = ResourceLedger(), LocalNews()
    for i, spec in enumerate(after, start=len(before) + 1):
        m = message(i, *spec)
        facts, _ = parse_content(m.content)
        news.record(m, facts, local, local.config)
        fleet.apply(m)
    view = MergedLedgerView(local, table, news)
    for resource in RESOURCES:
        assert dict(view.holders(resource)) == dict(fleet.holders(resource))
        assert dict(view.pending(resource)) == dict(fleet.pending(resource))


# Feature: real-time-data-flow, Property 4: Stream processing pipeline integration
@settings(max_examples=100, deadline=None)
@given(st.lists(step, min_size=1, max_size=30), st.integers(0, 40), st.integers(1, 10))
def test_the_global_predictor_is_deterministic_and_leaves_the_ledger_alone(steps: list, cut: int, lag: int) -> None:
    """Same messages, same table records at the same points: same analyses; the ledger is untouched."""

    def run() -> list[tuple[float, str, list[str]]]:
        fleet, local, table = ResourceLedger(), ResourceLedger(), GlobalLedgerTable()
        predictor = GlobalTablePredictor(LedgerPredictor(), table)
        records: list[dict] = []  # stage 2's record after each message, delivered ``lag`` messages later
        out = []
        for i, spec in enumerate(steps, start=1):
            m = message(i, *spec)
            if i > lag:
                table.apply(records[i - lag - 1])
            before = local.to_dict()
            analysis = predictor.predict(m, local)
            assert local.to_dict() == before
            assert 0.0 <= analysis.risk <= 1.0 and analysis.reason
            out.append((analysis.risk, analysis.reason, analysis.competing_agents))
            if i % 2 == cut % 2:  # this partition's agents: every other message
                local.apply(m)
            fleet.apply(m)
            resource = m.content["resource"]
            records.append(LedgerRecord(resource, resource_state(fleet, resource, m.timestamp), m.timestamp).to_dict())
        return out

    assert run() == run()
