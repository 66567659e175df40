"""Hypothesis strategies for wire types, shared by the test suites."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import strategies as st

from chorus_lab.schema import AgentMessage

ids = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
agent_ids = st.from_regex(r"[a-z]{1,8}-[0-9]{1,4}", fullmatch=True)

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=6)

aware_datetimes = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))])
)


@st.composite
def agent_messages(draw: st.DrawFn, agent: st.SearchStrategy[str] = agent_ids) -> AgentMessage:
    """Any valid AgentMessage."""
    return AgentMessage(
        agent_id=draw(agent),
        timestamp=draw(aware_datetimes),
        message_type=draw(st.sampled_from(["request", "response", "broadcast"])),
        content=draw(json_objects),
        target_agents=draw(st.lists(agent_ids, max_size=5)),
        correlation_id=draw(ids),
        metadata=draw(json_objects),
        message_id=draw(st.one_of(st.just(""), ids)),
        causation_id=draw(st.none() | ids),
    )
