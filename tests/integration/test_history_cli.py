"""``chorus-lab query`` and ``chorus-lab replay`` on a small processed fleet (embedded bus)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from chorus_lab import simulate
from chorus_lab.bus import Bus, open_bus
from chorus_lab.bus.partitioner import partition_for_key
from chorus_lab.cli import main
from chorus_lab.processor import ProcessorSettings, StreamProcessor, Topics
from chorus_lab.schema import AgentMessage, encode


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bus, list[AgentMessage]]:
    bus = open_bus(f"embedded://{tmp_path_factory.mktemp('bus')}")
    bus.admin().create_topics(Topics().specs(3))
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    messages = simulate.simulate(simulate.SimulationConfig(agents=10, messages=300, seed=4, start=start, mean_interval=timedelta(seconds=5), scenarios={})).messages
    producer = bus.producer()
    for m in messages:
        producer.produce(Topics().raw, encode(m), m.agent_id.encode())
    assert producer.flush(30) == 0
    producer.close()
    StreamProcessor(bus, "chorus-stage1", "cli-1", settings=ProcessorSettings(partitions=3)).run_until_caught_up(120)
    return bus, messages


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


def test_query_pages_through_one_agents_decisions(fleet: tuple[Bus, list[AgentMessage]]) -> None:
    bus, messages = fleet
    agent = messages[0].agent_id
    since, until = messages[0].timestamp, messages[-1].timestamp + timedelta(seconds=1)
    mine = [m.message_id for m in messages if m.agent_id == agent]
    seen: list[str] = []
    cursor: list[str] = []
    for _ in range(100):
        status, out, err = _cli("query", "--bus", bus.url, "--agent", agent, "--since", since.isoformat(), "--until", until.isoformat(), "--limit", "7", *cursor)
        assert status == 0, err
        rows = [json.loads(line) for line in out.splitlines()]
        assert all(r["agent_id"] == agent and r["partition"] == partition_for_key(agent.encode(), 3) for r in rows)
        seen += [r["message_id"] for r in rows]
        if "--cursor" not in err:
            break
        cursor = ["--cursor", err.split("--cursor ", 1)[1].strip()]
    assert seen == mine  # every decision of the agent, once, in order


def test_query_as_csv_and_the_conflict_view(fleet: tuple[Bus, list[AgentMessage]]) -> None:
    bus, messages = fleet
    status, out, _ = _cli("query", "--bus", bus.url, "--all", "--format", "csv", "--type", "request")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert status == 0 and rows and {r["event_type"] for r in rows} == {"request"}
    assert len(rows) == sum(m.message_type == "request" for m in messages)
    status, out, _ = _cli("query", "--bus", bus.url, "--view", "conflicts", "--window", "30min", "--format", "csv")
    windows = list(csv.DictReader(io.StringIO(out)))
    assert status == 0 and sum(int(w["decisions"]) for w in windows) == len(messages)


def test_replay_prints_the_state_at_a_time(fleet: tuple[Bus, list[AgentMessage]]) -> None:
    bus, messages = fleet
    early = messages[10].timestamp
    status, out, _ = _cli("replay", "--bus", bus.url, "--at", early.isoformat(), "--quiet")
    state = json.loads(out)
    assert status == 0
    assert state["events"] == sum(m.timestamp <= early for m in messages)
    assert set(state["trust"]) == {m.agent_id for m in messages if m.timestamp <= early}
    status, _, err = _cli("replay", "--bus", bus.url, "--from", early.isoformat())
    assert status == 1 and "--into" in err


def test_replay_into_the_live_topics_is_refused(fleet: tuple[Bus, list[AgentMessage]]) -> None:
    bus, messages = fleet
    status, _, err = _cli("replay", "--bus", bus.url, "--from", messages[0].timestamp.isoformat(), "--to", messages[5].timestamp.isoformat(), "--into", "", "--quiet")
    assert status == 1 and "live topics" in err
