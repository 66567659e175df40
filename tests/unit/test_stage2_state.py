"""Stage 2's checkpoint codec and journal: a restored core continues exactly like the original."""

from __future__ import annotations

import json

import pytest

from chorus_lab import simulate, statecodec
from chorus_lab.bus import Record
from chorus_lab.schema import encode
from chorus_lab.stage2 import Stage2, decisions_from_engine
from chorus_lab.stage2_processor import read_stage2_checkpoint


def decisions(seed: int) -> list:
    return decisions_from_engine(simulate.simulate(simulate.SimulationConfig(agents=30, messages=1500, seed=seed)).messages)


def outputs(stage: Stage2, items: list) -> list[tuple]:
    produced = []
    for decision in items:
        o = stage.process(decision)
        produced.append((
            [encode(a) for a in o.alerts], [encode(u) for u in o.graph_updates], [s.to_dict() for s in o.trust_signals],
            [r.to_dict() for r in o.ledger_updates], [encode(m) for m in o.metrics],
        ))
    return produced


@pytest.mark.parametrize("split", [150, 900])
def test_a_stage2_restored_from_json_produces_what_the_original_produces(split: int) -> None:
    items = decisions(seed=5)
    original = Stage2()
    outputs(original, items[:split])
    restored = statecodec.loads(statecodec.dumps(original))
    assert type(restored) is Stage2 and restored is not original
    expected, got = outputs(original, items[split:]), outputs(restored, items[split:])
    assert sum(len(e[0]) for e in expected) > 0, "the rest of the run must raise alerts for this to mean anything"
    assert got == expected


def test_the_codec_refuses_classes_outside_chorus_lab() -> None:
    with pytest.raises(ValueError, match="not a chorus_lab class"):
        statecodec.loads(json.dumps({"C": "subprocess:Popen", "A": {}}))


def test_the_journal_after_the_newest_complete_checkpoint_is_what_a_restore_replays() -> None:
    import hashlib
    import zlib

    key = "stage2/g/decisions"

    def rec(offset: int, k: str, value: bytes, headers=()) -> Record:
        return Record("snap", 0, offset, k.encode(), value, 0, tuple(headers))

    def checkpoint(offset: int, generation: str, state: dict) -> list[Record]:
        blob = zlib.compress(json.dumps(state).encode())
        gen = (("chorus.generation", generation.encode()),)
        manifest = {"format": 1, "generation": generation, "offsets": {"0": offset}, "chunks": 1, "sha256": hashlib.sha256(blob).hexdigest()}
        return [rec(offset, f"{key}/chunk-0", blob, gen + (("chorus.chunk", b"0"),)), rec(offset + 1, key, json.dumps(manifest).encode(), gen)]

    def journal(offset: int, generation: str, seq: int) -> Record:
        return rec(offset, f"{key}/journal-{seq}", json.dumps({"generation": generation, "seq": seq, "read": [[0, seq, seq]], "released": []}).encode())

    records = checkpoint(0, "a", {"n": 1}) + [journal(2, "a", 0)] + checkpoint(3, "b", {"n": 2}) + [journal(5, "b", 0), journal(6, "b", 1)]
    broken = rec(7, f"{key}/chunk-0", b"garbage", (("chorus.generation", b"c"), ("chorus.chunk", b"0")))
    found = read_stage2_checkpoint([*records, broken, rec(8, key, json.dumps({"format": 1, "generation": "c", "offsets": {}, "chunks": 1, "sha256": "0"}).encode())], key)
    assert found.state == {"n": 2} and found.offsets == {0: 3}
    assert [e["seq"] for e in found.journal] == [0, 1]
