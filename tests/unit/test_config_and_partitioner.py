"""Settings parsing and Kafka's murmur2 partitioner."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus_lab import config
from chorus_lab.bus import ConfigurationError, open_bus
from chorus_lab.bus.partitioner import murmur2, partition_for_key


@pytest.mark.parametrize(
    ("key", "expected"),
    # Vectors from Apache Kafka's own UtilsTest.testMurmur2.
    [(b"21", -973932308), (b"foobar", -790332482), (b"a-little-bit-long-string", -985981536),
     (b"a-little-bit-longer-string", -1486304829), (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971), (b"abc", 479470107)],
)
def test_murmur2_matches_kafka(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


@settings(max_examples=100)
@given(st.binary(max_size=64), st.integers(1, 64))
def test_partition_is_in_range(key: bytes, partitions: int) -> None:
    assert 0 <= partition_for_key(key, partitions) < partitions


def test_topic_specs_cover_every_public_topic_with_defaults() -> None:
    specs = {s.name: s for s in config.topic_specs()}
    assert set(config.PUBLIC_TOPICS) <= set(specs)
    assert all(s.partitions == 6 for s in specs.values())
    assert specs[config.RESOURCE_LEDGER].cleanup_policy == "compact"
    assert specs[config.RESOURCE_LEDGER].topic_config()["retention.ms"] == "-1"


def test_retention_overrides_and_errors() -> None:
    specs = {s.name: s for s in config.topic_specs(3, config.parse_retention(["system-alerts=2h", "agent-messages-raw=forever"]))}
    assert specs["system-alerts"].retention_ms == 7_200_000
    assert specs["agent-messages-raw"].retention_ms is None
    with pytest.raises(ValueError, match="unknown topic in retention settings: nope"):
        config.topic_specs(retention_ms={"nope": 1})
    with pytest.raises(ValueError, match="not a duration: '3 weeks'"):
        config.parse_duration_ms("3 weeks")


def test_client_properties_from_file_and_environment(tmp_path: Path) -> None:
    properties = tmp_path / "client.properties"
    properties.write_text("# Confluent Cloud\nbootstrap.servers=pkc-1.example:9092\nsecurity.protocol=SASL_SSL\nsasl.password=from-file\n")
    found = config.kafka_client_properties({"CHORUS_KAFKA_CONFIG": str(properties), "CHORUS_KAFKA_SASL_PASSWORD": "from-env", "OTHER": "x"})
    assert found == {"bootstrap.servers": "pkc-1.example:9092", "security.protocol": "SASL_SSL", "sasl.password": "from-env"}
    assert config.redact(found)["sasl.password"] == "***"


def test_a_bad_properties_line_is_named(tmp_path: Path) -> None:
    properties = tmp_path / "client.properties"
    properties.write_text("bootstrap.servers=x:1\nthis is not a property\n")
    with pytest.raises(ValueError, match=r"client.properties:2: expected key=value"):
        config.read_properties(properties)


def test_bus_urls_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="unknown bus scheme 'redis'"):
        open_bus("redis://localhost")
    with pytest.raises(ConfigurationError, match="has no scheme"):
        open_bus("localhost:9092")


def test_environment_files_name_the_same_dependencies() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    wanted = {dep.replace(" ", "") for dep in project["dependencies"] + project["optional-dependencies"]["dev"]}
    import yaml  # PyYAML comes with Jupyter

    listed = yaml.safe_load((root / "environment.yml").read_text())["dependencies"]
    tools = ("python", "pip", "openjdk", "maven")
    conda = {dep.replace(" ", "") for dep in listed if isinstance(dep, str) and not dep.startswith(tools)}
    assert wanted == conda
