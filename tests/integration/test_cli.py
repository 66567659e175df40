"""The ``chorus-lab`` command, run as a user runs it, on both backends."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

from chorus_lab import config
from chorus_lab.bus import Bus, TopicPartition, TopicSpec
from chorus_lab.deadletter import DeadLetter
from chorus_lab.schema import decode_agent_message


def chorus(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chorus_lab.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def read_topic(bus: Bus, topic: str, count: int, timeout: float = 30, until=None) -> list:
    """Records of ``topic`` from the start, until ``count`` were read (or ``until(records)``)."""
    consumer = bus.consumer(None)
    description = bus.admin().describe(topic)
    assert description is not None, f"{topic} is missing"
    consumer.assign({TopicPartition(topic, p): 0 for p in range(description.partitions)})
    records: list = []
    deadline = time.monotonic() + timeout
    done = until or (lambda rs: len(rs) >= count)
    while not done(records) and time.monotonic() < deadline:
        records += consumer.consume(500, 0.3)
    consumer.close()
    return records


def test_topics_create_then_describe(any_bus: Bus, tmp_path: Path) -> None:
    created = chorus("topics", "create", "--bus", any_bus.url, "--retention", "system-alerts=365d", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    described = chorus("topics", "describe", "--bus", any_bus.url, "--retention", "system-alerts=365d", cwd=tmp_path)
    assert described.returncode == 0, described.stdout + described.stderr
    for name in config.PUBLIC_TOPICS:
        line = next(line for line in described.stdout.splitlines() if line.startswith(name + " "))
        assert line.split()[1] == "6" and line.endswith("ok")
    assert "365d" in next(line for line in described.stdout.splitlines() if line.startswith("system-alerts "))
    # Asking for another shape names what differs and fails, without touching the topic.
    again = chorus("topics", "create", "--bus", any_bus.url, "--partitions", "3", cwd=tmp_path)
    assert again.returncode == 1
    assert "partitions: topic has 6, spec wants 3" in again.stderr


def test_produce_sends_good_lines_and_dead_letters_bad_ones(any_bus: Bus, tmp_path: Path) -> None:
    run = uuid.uuid4().hex  # the Kafka topics are shared with other tests of the session
    good = {
        "agent_id": "planner-1", "timestamp": "2026-03-01T12:00:00Z", "message_type": "request",
        "content": {"action": "request_resource", "resource": "gpu-1", "amount": 1}, "target_agents": ["steward-1"],
        "correlation_id": f"{run}-1", "metadata": {},
    }
    lines = [json.dumps(good), json.dumps({**good, "timestamp": "2026-03-01T12:00:00"}), json.dumps({**good, "correlation_id": f"{run}-2"}), '{"agent_id": "%s"' % run, ""]
    source = tmp_path / "messages.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = chorus("produce", str(source), "--bus", any_bus.url, "--spool-dir", str(tmp_path / "spool"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 message(s) sent" in result.stdout and "2 invalid line(s)" in result.stdout
    assert "line 2: timestamp: timestamp has no time zone" in result.stdout
    raw = [decode_agent_message(r.value) for r in read_topic(any_bus, config.RAW, 2, until=lambda rs: sum(run.encode() in r.value for r in rs) >= 2)]
    assert sorted(m.correlation_id for m in raw if m.correlation_id.startswith(run)) == [f"{run}-1", f"{run}-2"]
    dead_records = read_topic(any_bus, config.DLQ, 2, until=lambda rs: sum(run.encode() in r.value for r in rs) >= 2)
    dead = [DeadLetter.from_record(r) for r in dead_records if r.value in (lines[1].encode(), lines[3].encode())]
    assert sorted((d.source, d.field) for d in dead) == [(f"file:{source}:2", "timestamp"), (f"file:{source}:4", "<json>")]
    assert {d.original_value for d in dead} == {lines[1].encode(), lines[3].encode()}


def test_describe_reports_a_missing_topic(tmp_path: Path) -> None:
    result = chorus("topics", "describe", "--bus", f"embedded://{tmp_path}/bus", cwd=tmp_path)
    assert result.returncode == 1
    assert "agent-messages-raw" in result.stdout and "missing" in result.stdout


def test_simulate_writes_messages_and_labels(tmp_path: Path) -> None:
    result = chorus("simulate", "--agents", "20", "--messages", "300", "--scenarios", "routing_loop=1,byzantine=1", "--out", "fleet.jsonl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    messages = [decode_agent_message(line) for line in (tmp_path / "fleet.jsonl").read_bytes().splitlines()]
    labels = [json.loads(line) for line in (tmp_path / "fleet.labels.jsonl").read_text().splitlines()]
    assert len(messages) >= 300
    assert sorted(label["pattern"] for label in labels) == ["byzantine", "routing_loop"]
    assert {label["onset_message_id"] for label in labels} <= {m.message_id for m in messages}


def test_a_bad_scenario_name_is_a_one_line_error(tmp_path: Path) -> None:
    result = chorus("simulate", "--scenarios", "loops=2", "--out", "x.jsonl", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("chorus-lab: error:") and "loops" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_runs_a_fleet_through_the_bus(any_bus: Bus, tmp_path: Path) -> None:
    from chorus_lab.broker import free_loopback_port

    result = chorus("demo", "--bus", any_bus.url, "--agents", "12", "--messages", "200", "--rate", "0", "--once", "--port", str(free_loopback_port()), cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("stopped: "), result.stdout
    shown = int(last.split()[1])
    assert shown >= 200
    assert len(read_topic(any_bus, config.RAW, shown)) >= shown
    assert len(read_topic(any_bus, config.DECISIONS, shown)) >= shown, "--once stops after stage 1 decided the whole fleet"
