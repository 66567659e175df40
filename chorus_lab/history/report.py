"""``chorus-lab audit report``: run ``notebooks/audit_report.ipynb`` headless and keep it as HTML.

papermill executes the notebook with its parameters (``bus``, ``since``, ``until``,
``agents``, ``topic_prefix``) into ``OUT/audit_report.ipynb``; nbconvert turns that into
``OUT/audit_report.html``. The notebook draws with matplotlib (PNG, embedded in the
HTML as data) and prints tables as plain HTML; the HTML is written without MathJax or
require.js, so it opens offline and in a mail attachment.

Its reads are bounded (each query takes the partitions' end offsets when it starts), so a
scheduled run always ends.
"""

from __future__ import annotations

from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
REPORT = NOTEBOOKS / "audit_report.ipynb"


def run_report(bus_url: str, since: str, until: str, out_dir: Path, *, agents: str = "", topic_prefix: str = "", timeout_s: int = 600) -> tuple[Path, Path]:
    """Execute the audit report for ``[since, until)`` into ``out_dir``; return (notebook, html)."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    from chorus_lab.history.queries import parse_time

    parse_time(since), parse_time(until)  # fail here, naming the argument, not inside the kernel
    if not REPORT.is_file():
        raise FileNotFoundError(f"the report notebook {REPORT} is missing (run from a source checkout)")
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / "audit_report.ipynb"
    papermill.execute_notebook(
        str(REPORT), str(executed),
        parameters={"bus": bus_url, "since": since, "until": until, "agents": agents, "topic_prefix": topic_prefix},
        kernel_name="python3", progress_bar=False, execution_timeout=timeout_s, cwd=str(out_dir),
    )
    exporter = HTMLExporter(template_name="lab", exclude_input=True)
    exporter.mathjax_url = ""  # nothing to typeset; no CDN script
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    html = out_dir / "audit_report.html"
    html.write_text(_strip_cdn(body), encoding="utf-8")
    return executed, html


def _strip_cdn(html: str) -> str:
    """Drop the <script src="https://…"> tags of the lab template (require.js, MathJax)."""
    import re

    return re.sub(r'<script[^>]*\ssrc="https?://[^"]*"[^>]*>\s*</script>', "", html)


__all__ = ["REPORT", "run_report"]
