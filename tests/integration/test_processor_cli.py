"""``chorus-lab analyze``, ``run`` and ``process --autoscale``, run as a user runs them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from chorus_lab import config, simulate
from chorus_lab.bus import open_bus
from chorus_lab.processor import OUTPUT_TOPICS, Topics
from chorus_lab.schema import ProcessedDecision, decode, encode
from tests.integration.test_processor_harness import Reader
from tests.integration.test_processor_recovery import comparable, produce


def chorus(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chorus_lab.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def background(*args: str, cwd: Path) -> tuple[subprocess.Popen[str], list[str]]:
    """Start a command; its output lines are collected as they come."""
    process = subprocess.Popen([sys.executable, "-m", "chorus_lab.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True).start()  # type: ignore[union-attr]
    return process, lines


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_analyze_writes_every_output_topic_and_is_deterministic(tmp_path: Path) -> None:
    sim = simulate.simulate(simulate.SimulationConfig(agents=20, messages=800, seed=4, scenarios={"conflict": 1, "resource_hoarding": 1}))
    lines = [encode(m) for m in sim.messages]
    lines.insert(10, b'{"agent_id": "a-1", "timestamp": "2026-01-01T00:00:00"}')  # no time zone, fields missing
    lines.insert(20, lines[5])  # a re-sent message: no second decision
    lines.append(b"not json at all")
    source = tmp_path / "input.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n\n")

    runs = []
    for out in ("one", "two"):
        done = chorus("analyze", str(source), "--out", str(tmp_path / out), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert f"{len(lines)} line(s): {len(lines) - 2} message(s) analysed, 2 invalid" in done.stdout
        assert sorted(p.name for p in (tmp_path / out).iterdir()) == sorted(f"{t}.jsonl" for t in OUTPUT_TOPICS)
        runs.append([decode(ProcessedDecision, line) for line in (tmp_path / out / f"{config.DECISIONS}.jsonl").read_bytes().splitlines()])
    first, second = runs
    # One partition: decisions in file order, one per distinct message.
    assert [d.original_message.message_id for d in first] == [m.message_id for m in sim.messages]
    assert [comparable(d) for d in first] == [comparable(d) for d in second]
    dead = [json.loads(line) for line in (tmp_path / "one" / f"{config.DLQ}.jsonl").read_text().splitlines()]
    assert [(d["stage"], d["source"]) for d in dead] == [("decode", f"file:{source}:11"), ("decode", f"file:{source}:{len(lines)}")]
    assert dead[0]["field"] and dead[1]["original_value"] == "not json at all"
    assert (tmp_path / "one" / f"{config.ERRORS}.jsonl").read_text() == ""
    alerts = [json.loads(line) for line in (tmp_path / "one" / f"{config.ALERTS}.jsonl").read_text().splitlines()]
    assert {"conflict", "resource_hoarding"} <= {a["pattern"] for a in alerts}  # stage 2 ran
    for topic in (config.ALERTS, config.GRAPH_UPDATES, config.TRUST_SIGNALS, config.RESOURCE_LEDGER):
        assert (tmp_path / "one" / f"{topic}.jsonl").read_bytes() == (tmp_path / "two" / f"{topic}.jsonl").read_bytes(), topic


def test_analyze_names_a_missing_input(tmp_path: Path) -> None:
    done = chorus("analyze", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 1 and "nope.jsonl does not exist" in done.stderr


def test_run_processes_the_bus_until_sigterm_then_leaves_cleanly(tmp_path: Path) -> None:
    url = f"embedded://{tmp_path}/bus"
    bus = open_bus(url)
    topics = Topics("run-")
    process, output = background("run", "--bus", url, "--topic-prefix", topics.prefix, "--instance", "r-1", cwd=tmp_path)
    try:
        wait_for(lambda: bus.admin().describe(topics.raw) is not None, 30, "the topics")
        messages = simulate.simulate(simulate.SimulationConfig(agents=10, messages=200, seed=8, scenarios={})).messages
        produce(bus, topics.raw, messages)
        reader = Reader(bus, topics)
        reader.until(lambda: reader.count >= len(messages), 60)
        reader.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert process.returncode == 0, "".join(output)
    wait_for(lambda: any(line.startswith("stopped:") for line in output), 5, "the summary")
    assert f"{len(messages)} decisions" in next(line for line in output if line.startswith("stopped:"))


def test_autoscale_adds_instances_for_a_backlog_and_removes_them_when_idle(tmp_path: Path) -> None:
    url = f"embedded://{tmp_path}/bus"
    bus = open_bus(url)
    topics = Topics("auto-")
    bus.admin().create_topics(topics.specs(6))
    messages = simulate.simulate(simulate.SimulationConfig(agents=30, messages=5000, seed=9, scenarios={})).messages
    produce(bus, topics.raw, messages)
    supervisor, output = background(
        "process", "--autoscale", "--bus", url, "--topic-prefix", topics.prefix, "--instance", "auto",
        "--max", "2", "--lag-threshold", "1000", "--cooldown", "1", cwd=tmp_path,
    )
    try:
        wait_for(lambda: any("0 → 2 instance(s)" in line for line in output), 30, "scaling up")
        reader = Reader(bus, topics)
        reader.until(lambda: reader.count >= len(messages), 120)
        reader.poll(0.5)
        ids = [d.original_message.message_id for ds in reader.seen.decisions.values() for _, _, d in ds]
        reader.close()
        assert len(ids) == len(set(ids)) == len(messages)
        assert {d.processing_metadata.instance_id for ds in reader.seen.decisions.values() for _, _, d in ds} <= {"auto-0", "auto-1"}
        wait_for(lambda: any("2 → 1 instance(s)" in line for line in output), 60, "scaling down")
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(60)
    assert supervisor.returncode == 0, "".join(output)
    assert any("every instance left the group" in line for line in output)
