"""Properties 8, 12 and 17: loops, the other patterns, and anomalies are found; look-alikes are not."""

from __future__ import annotations

import random

from hypothesis import event, given, settings
from hypothesis import strategies as st

from chorus_lab.stage2 import Stage2Config
from tests.properties.fleet import (
    LOOK_ALIKES,
    PATTERNS,
    Ids,
    Pipeline,
    Script,
    agent_names,
    conversation,
    delegation_chain,
    fleet_script,
    msg,
    ping_pong,
    routing_loop,
)


@st.composite
def loop_or_look_alike(draw: st.DrawFn) -> Script:
    names = draw(agent_names)
    ids = Ids(f"l{draw(st.integers(0, 10**6))}")
    kind = routing_loop if draw(st.booleans()) else draw(st.sampled_from([delegation_chain, ping_pong, conversation]))
    return draw(kind(names, draw(st.floats(0.0, 1000.0)), ids))


# Feature: real-time-data-flow, Property 8: Routing loop detection and highlighting
@settings(max_examples=100, deadline=None)
@given(loop_or_look_alike())
def test_routing_loops_are_detected_and_highlighted(script: Script) -> None:
    event(script.kind)
    pipeline = Pipeline()
    pipeline.feed(script.messages)
    loops = [a for a in pipeline.alerts if a.pattern == "routing_loop"]
    highlighted = [u for u in pipeline.graph_updates if u.update_type == "loop_detected"]
    if script.pattern is None:  # an honest look-alike: replies, two agents, one conversation
        assert loops == [] and highlighted == []
        return
    assert len({a.alert_id for a in loops}) == 1
    assert set(loops[0].affected_agents) == set(script.culprits)
    assert len(highlighted) == 1 and set(highlighted[0].affected_nodes) == set(script.culprits)
    assert set(script.culprits) <= {a for loop in highlighted[0].graph_metrics.detected_loops for a in loop}
    # detected the moment the task reaches an agent that already handed it on
    onset = script.messages[len(script.culprits)]  # after the entry, one hop per member
    assert loops[0].detected_at == onset.timestamp


# Feature: real-time-data-flow, Property 12: Advanced pattern detection
@settings(max_examples=100, deadline=None)
@given(fleet_script({**PATTERNS, **LOOK_ALIKES}))
def test_patterns_raise_alerts_and_look_alikes_do_not(script: Script) -> None:
    event(script.kind)
    pipeline = Pipeline()
    pipeline.feed(script.messages)
    pipeline.tick((script.messages[-1].timestamp - script.messages[0].timestamp).total_seconds() + 3600)
    detections = [a for a in pipeline.alerts if a.pattern != "quarantine"]
    if script.pattern is None:
        assert detections == [], f"{script.kind} raised {[(a.pattern, a.description) for a in detections]}"
        return
    mine = [a for a in detections if a.pattern == script.pattern]
    assert mine, f"{script.kind}: no {script.pattern} alert"
    assert len({a.alert_id for a in mine}) == 1  # one incident, one alert (plus updates)
    alert = mine[0]
    assert set(alert.affected_agents) & set(script.culprits)
    assert alert.description.strip() and 0.0 < alert.confidence <= 1.0 and alert.evidence
    ids = {m.message_id for m in script.messages}
    assert set(alert.evidence) <= ids
    assert script.messages[0].timestamp <= alert.detected_at


@st.composite
def behaviour_shift(draw: st.DrawFn) -> tuple[list, str | None]:
    """An agent with steady habits, then (maybe) a strong shift in rate, fan-out or payload."""
    rng = random.Random(draw(st.integers(0, 10**6)))
    mean_gap = draw(st.floats(0.5, 20.0))
    max_targets = draw(st.integers(1, 6))
    text = draw(st.integers(10, 150))
    shift = draw(st.sampled_from([None, "rate", "fan_out", "payload"]))
    t, out = 0.0, []
    for i in range(draw(st.integers(40, 120))):
        t += rng.expovariate(1 / mean_gap)
        out.append(msg("agent", [f"p{j}" for j in range(rng.randint(1, max_targets))], f"b{i}", t, "broadcast", action="status", note="x" * rng.randint(text // 2, text)))
    for i in range(30):
        gap, targets, size = rng.expovariate(1 / mean_gap), rng.randint(1, max_targets), rng.randint(text // 2, text)
        if shift == "rate":
            gap = mean_gap / 50 * rng.random()
        elif shift == "fan_out":
            targets = 10 * max_targets + rng.randint(30, 60)
        elif shift == "payload":
            size = 60 * text + 4000
        t += gap
        out.append(msg("agent", [f"p{j}" for j in range(targets)], f"s{i}", t, "broadcast", action="status", note="x" * size))
    return out, shift


# Feature: real-time-data-flow, Property 17: Statistical anomaly detection
@settings(max_examples=100, deadline=None)
@given(behaviour_shift())
def test_significant_changes_in_behaviour_are_flagged(case: tuple[list, str | None]) -> None:
    messages, shift = case
    event(str(shift))
    pipeline = Pipeline(Stage2Config(patterns=("anomaly",)))
    pipeline.feed(messages)
    anomalies = [a for a in pipeline.alerts if a.pattern == "anomaly"]
    if shift is None:
        assert anomalies == []
        return
    assert anomalies and anomalies[0].affected_agents == ["agent"]
    assert anomalies[0].detected_at >= messages[-30].timestamp  # not before the shift
    assert shift in anomalies[0].details["features"] or any(shift in a.details["features"] for a in anomalies)
