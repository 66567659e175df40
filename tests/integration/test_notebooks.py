"""The notebooks run headless through papermill against a bus holding a simulated fleet."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import nbformat
import papermill
import pytest

from chorus_lab import config
from chorus_lab.bus import Bus, open_bus
from chorus_lab.live.feed import create_live_topics, pipeline_records, produce_records
from chorus_lab.schema import ProcessedDecision, decode
from chorus_lab.simulate import SimulationConfig, simulate

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.fixture(scope="module")
def fleet_bus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bus, dict[str, float]]:
    """An embedded bus with a simulated fleet's pipeline outputs; and each agent's final trust."""
    bus = open_bus(f"embedded://{tmp_path_factory.mktemp('nb')}/bus")
    create_live_topics(bus)
    sim = simulate(SimulationConfig(agents=25, messages=1200, seed=4))
    records = list(pipeline_records(sim.messages, finish=sim.messages[-1].timestamp + timedelta(seconds=20)))
    produce_records(bus, records)
    trust: dict[str, float] = {}
    for record in records:
        if record.topic == config.DECISIONS:
            decision = decode(ProcessedDecision, record.value)
            trust[decision.original_message.agent_id] = decision.trust_impact.after
    return bus, trust


def outputs(path: Path) -> str:
    """All text outputs of an executed notebook, joined."""
    book = nbformat.read(path, as_version=4)
    texts = []
    for cell in book.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(texts)


def run(name: str, out: Path, **parameters: object) -> str:
    papermill.execute_notebook(
        str(NOTEBOOKS / name), str(out), parameters=dict(parameters, follow=False, timeout_s=60.0),
        kernel_name="python3", progress_bar=False, cwd=str(out.parent),
    )
    return outputs(out)


def test_fleet_overview_runs_headless(fleet_bus: tuple[Bus, dict[str, float]], tmp_path: Path) -> None:
    bus, trust = fleet_bus
    text = run("fleet_overview.ipynb", tmp_path / "overview.ipynb", bus=bus.url)
    assert "caught up: True" in text
    assert f"{len(trust)} agents" in text
    lowest = min(trust, key=lambda a: (trust[a], a))
    assert lowest in text and "metric windows" in text
    assert "image/png" in (tmp_path / "overview.ipynb").read_text(), "the metrics are plotted as a static image"


def test_agent_investigation_runs_headless_for_the_given_agent(fleet_bus: tuple[Bus, dict[str, float]], tmp_path: Path) -> None:
    bus, trust = fleet_bus
    agent = min(trust, key=lambda a: (trust[a], a))
    text = run("agent_investigation.ipynb", tmp_path / "agent.ipynb", bus=bus.url, agent_id=agent)
    assert f"{agent}: trust {trust[agent]:.1f}" in text
    assert f"recent decisions of {agent}" in text and "connections" in text
    unknown = run("agent_investigation.ipynb", tmp_path / "nobody.ipynb", bus=bus.url, agent_id="no-such-agent")
    assert "no-such-agent: not seen on the stream" in unknown
