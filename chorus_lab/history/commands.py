"""The ``chorus-lab`` commands of event sourcing: ``query``, ``replay`` and ``audit verify|report``.

Kept here, next to what they run, so that ``chorus_lab/cli.py`` only registers them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from chorus_lab import config
from chorus_lab.bus import open_bus

Handler = Callable[[argparse.Namespace], int]


def add_history_commands(command: Callable[[str, Handler, str], argparse.ArgumentParser], bus_option: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``query``, ``replay`` and ``audit`` on the ``chorus-lab`` parser."""
    query = command("query", _query, "print historical decisions and alerts by agent, time range and event type")
    bus_option(query)
    query.add_argument("--agent", help="only this agent (reads only its partition)")
    query.add_argument("--since", help="from this time, inclusive (ISO 8601, e.g. 2026-01-01T12:00:00Z)")
    query.add_argument("--until", help="up to this time, exclusive")
    query.add_argument("--type", action="append", dest="types", metavar="TYPE", help="event type: request, response, broadcast or alert (repeatable)")
    query.add_argument("--limit", type=int, default=1000, help="rows per page (default %(default)s)")
    query.add_argument("--cursor", help="continue after the page that printed this cursor")
    query.add_argument("--all", action="store_true", help="every page, not just one")
    query.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    query.add_argument("--view", choices=["events", "trust", "alerts", "conflicts"], default="events",
                       help="events (default), or a temporal view: trust (of --agent), alerts or conflicts per --window")
    query.add_argument("--window", default="1h", help="window of the alerts and conflicts views (pandas frequency, default %(default)s)")
    query.add_argument("--topic-prefix", default="", help="query a sandbox copy of the topics")

    replay = command("replay", _replay, "rebuild the pipeline's state as of a time, or re-run a time range into sandbox topics")
    bus_option(replay)
    replay.add_argument("--at", help="print the state (trust, quarantines, ledger, causal graph) as of this time")
    replay.add_argument("--from", dest="since", help="with --to and --into: re-run the events after this time …")
    replay.add_argument("--to", dest="until", help="… up to this time …")
    replay.add_argument("--into", help="… into the sandbox topics <INTO><topic>, starting from the state at --from")
    replay.add_argument("--group", default="chorus-stage1", help="consumer group whose checkpoints to start from (default %(default)s)")
    replay.add_argument("--no-checkpoints", action="store_true", help="replay from the log start even when a checkpoint is usable")
    replay.add_argument("--topic-prefix", default="", help="replay a sandbox copy of the topics")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")

    audit = command("audit", _audit, "verify the audit trail's hash chains, or write the audit report")
    audit.add_argument("action", choices=["verify", "report"])
    bus_option(audit)
    audit.add_argument("--topic", action="append", dest="topics", metavar="TOPIC", help=f"verify: topic to check (repeatable; default {config.DECISIONS} and {config.ALERTS})")
    audit.add_argument("--partition", type=int, help="verify: only this partition")
    audit.add_argument("--from-offset", type=int, help="verify: first offset to check")
    audit.add_argument("--to-offset", type=int, help="verify: check up to this offset, exclusive")
    audit.add_argument("--topic-prefix", default="", help="verify or report on a sandbox copy of the topics")
    audit.add_argument("--since", help="report: from this time (ISO 8601)")
    audit.add_argument("--until", help="report: up to this time")
    audit.add_argument("--agents", default="", help="report: comma-separated agents to chart (default: the five whose trust fell lowest)")
    audit.add_argument("--out", type=Path, help="report: directory for audit_report.ipynb and audit_report.html")


def _query(args: argparse.Namespace) -> int:
    import pandas as pd

    from chorus_lab.history import temporal
    from chorus_lab.history.queries import parse_time, query, query_all

    bus = open_bus(args.bus)
    criteria = {
        "agent": args.agent, "since": parse_time(args.since) if args.since else None, "until": parse_time(args.until) if args.until else None,
        "event_types": args.types, "limit": args.limit, "topic_prefix": args.topic_prefix,
    }
    cursor = None
    if args.view != "events":
        frame = query_all(bus, **criteria)
        if args.view == "trust":
            if not args.agent:
                raise ValueError("--view trust needs --agent")
            frame = temporal.trust_over_time(frame, args.agent)
        elif args.view == "alerts":
            frame = temporal.alert_counts(frame, args.window).reset_index()
        else:
            frame = temporal.conflict_rate(frame, args.window).reset_index()
    elif args.all:
        frame = query_all(bus, **criteria)
    else:
        frame, cursor = query(bus, cursor=args.cursor, **criteria)
    frame = frame.copy()
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]):
            frame[column] = frame[column].map(lambda t: t.isoformat())
    if args.format == "csv":
        frame.to_csv(sys.stdout, index=False)
    else:
        for record in frame.to_dict("records"):
            print(json.dumps(record, default=str, ensure_ascii=False))
    if cursor:
        print(f"next page: --cursor {cursor}", file=sys.stderr)
    return 0


def _replay(args: argparse.Namespace) -> int:
    from chorus_lab.history.queries import parse_time
    from chorus_lab.history.replay import replay_into, state_at

    bus = open_bus(args.bus)
    if args.at:
        if args.since or args.until or args.into:
            raise ValueError("use either --at, or --from, --to and --into")
        state = state_at(bus, parse_time(args.at), group_id=args.group, topic_prefix=args.topic_prefix,
                         use_checkpoints=not args.no_checkpoints, progress=not args.quiet)
        print(json.dumps(state.to_dict(), indent=2, ensure_ascii=False))
        return 0
    if not (args.since and args.until) or args.into is None:
        raise ValueError("give --at TIME, or --from T1 --to T2 --into PREFIX")
    run = replay_into(bus, parse_time(args.since), parse_time(args.until), args.into, group_id=args.group,
                      topic_prefix=args.topic_prefix, progress=not args.quiet)
    print(f"re-ran {run.copied} message(s) into {args.into}*: {run.stats.summary()}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    if args.action == "report":
        return _audit_report(args)
    from chorus_lab.audit import verify

    bus = open_bus(args.bus)
    topics = args.topics or [args.topic_prefix + config.DECISIONS, args.topic_prefix + config.ALERTS]
    reports = verify(bus, topics, partition=args.partition, from_offset=args.from_offset, to_offset=args.to_offset)
    for report in reports:
        heads = ", ".join(f"{lane} #{link.seq} {link.hash[:12]}" for lane, link in sorted(report.heads.items()))
        status = "ok" if report.ok else f"FAILED — {report.finding}"
        print(f"{report.topic}[{report.partition}] offsets {report.start}-{report.end}: {report.records} records, {status}" + (f" (heads: {heads})" if heads and report.ok else ""))
    failed = [r for r in reports if not r.ok]
    print(f"{len(reports) - len(failed)} of {len(reports)} partition(s) verified" + (f"; first problem: {failed[0].finding}" if failed else ""))
    return 1 if failed else 0


def _audit_report(args: argparse.Namespace) -> int:
    from chorus_lab.history.report import run_report

    if not (args.since and args.until and args.out):
        raise ValueError("audit report needs --since, --until and --out")
    notebook, html = run_report(open_bus(args.bus).url, args.since, args.until, args.out, agents=args.agents, topic_prefix=args.topic_prefix)
    print(f"wrote {notebook} and {html}")
    return 0


__all__ = ["add_history_commands"]
