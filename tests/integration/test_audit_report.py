"""``chorus-lab audit report`` runs the audit notebook headless (papermill) and writes an
offline HTML report with its plots and the audit-trail verification result; the incident
replay notebook runs too."""

from __future__ import annotations

import base64
import contextlib
import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import papermill
import pytest

from chorus_lab import simulate
from chorus_lab.bus import Bus, open_bus
from chorus_lab.cli import main
from chorus_lab.history.report import NOTEBOOKS
from chorus_lab.processor import ProcessorSettings, StreamProcessor, Topics
from chorus_lab.schema import encode


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bus, datetime, datetime]:
    """An embedded bus with a simulated fleet (every scenario once) processed by stage 1."""
    bus = open_bus(f"embedded://{tmp_path_factory.mktemp('bus')}")
    bus.admin().create_topics(Topics().specs(3))
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    messages = simulate.simulate(simulate.SimulationConfig(agents=12, messages=600, seed=2, start=start, mean_interval=timedelta(seconds=3))).messages
    producer = bus.producer()
    for m in messages:
        producer.produce(Topics().raw, encode(m), m.agent_id.encode())
    assert producer.flush(30) == 0
    producer.close()
    StreamProcessor(bus, "chorus-stage1", "report-1", settings=ProcessorSettings(partitions=3)).run_until_caught_up(120)
    return bus, start, messages[-1].timestamp + timedelta(seconds=1)


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(list(argv))
    return status, out.getvalue()


def test_audit_report_writes_an_offline_html_with_plots_and_the_verification(fleet: tuple[Bus, datetime, datetime], tmp_path: Path) -> None:
    bus, start, end = fleet
    status, text = _cli("audit", "report", "--bus", bus.url, "--since", start.isoformat(), "--until", end.isoformat(), "--out", str(tmp_path))

    assert status == 0, text
    html = (tmp_path / "audit_report.html").read_text(encoding="utf-8")
    assert (tmp_path / "audit_report.ipynb").is_file()
    images = re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 3  # trust trajectories, alert timeline, conflict rate
    assert all(base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n" for image in images)
    assert "Audit trail verification: all 6 partitions verified" in html
    assert "Trust trajectories" in html and "Interventions and their effect" in html
    assert not re.search(r'<script[^>]+src="https?://', html), "the report must not load scripts from a CDN"


def test_audit_report_shows_a_broken_chain(fleet: tuple[Bus, datetime, datetime], tmp_path: Path) -> None:
    """A forged decision (unstamped) on a copy of the log makes the report say so."""
    import sqlite3

    bus, start, end = fleet
    source = sqlite3.connect(Path(bus.url.removeprefix("embedded://")) / "bus.sqlite3")
    (tmp_path / "copy").mkdir()
    target = sqlite3.connect(tmp_path / "copy" / "bus.sqlite3")
    with target:
        source.backup(target)
    source.close()
    target.close()
    copy = open_bus(f"embedded://{tmp_path / 'copy'}")
    producer = copy.producer()
    producer.produce(Topics().decisions, b'{"forged": true}', b"agent-001", timestamp_ms=int(end.timestamp() * 1000))
    assert producer.flush(30) == 0
    producer.close()

    status, _ = _cli("audit", "report", "--bus", copy.url, "--since", start.isoformat(), "--until", end.isoformat(), "--out", str(tmp_path / "out"))

    html = (tmp_path / "out" / "audit_report.html").read_text(encoding="utf-8")
    assert status == 0
    assert "Audit trail verification: FAILED — unstamped" in html


def test_the_incident_replay_notebook_reconstructs_each_step(fleet: tuple[Bus, datetime, datetime], tmp_path: Path) -> None:
    bus, start, end = fleet
    out = tmp_path / "incident.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / "replay_incident.ipynb"), str(out),
        parameters={"bus": bus.url, "since": (start + timedelta(minutes=20)).isoformat(), "until": end.isoformat(), "steps": 4, "group": "chorus-stage1"},
        kernel_name="python3", progress_bar=False, cwd=str(tmp_path),
    )
    text = out.read_text(encoding="utf-8")
    assert "4 states reconstructed" in text
    assert text.count("image/png") >= 1
