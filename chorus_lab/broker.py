"""A local Apache Kafka broker (KRaft, one node) for development and tests.

The broker is the real Apache Kafka, resolved from Maven Central into a cache
directory outside git (``install``), and run as a child JVM (``LocalBroker``) or
as a detached background process for the CLI (``start_detached``/``stop_detached``/
``status``).

Listeners, all on 127.0.0.1:

- ``PLAINTEXT`` — what the app and most tests use (``BrokerInfo.bootstrap``).
- ``SASL_SSL`` with PLAIN (optional) — the shape of Confluent Cloud, with a
  self-signed certificate (``BrokerInfo.ca_file``).
- ``PROXIED`` (optional) — plaintext, but advertised on a port where a TCP proxy
  listens, so tests can cut the network between a client and the broker.

The SASL password is never printed or logged here: it lives in a 0600 file in the
data directory and is hidden from ``repr(BrokerInfo)``.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
LOG4J_VERSION = "2.25.3"
# Kafka 4.1 is built against SLF4J 1.7 (its POM pins slf4j-api 1.7.36), so the log4j
# binding must be the SLF4J 1.x one, as in Kafka's release tarball; log4j-slf4j2-impl
# would leave SLF4J on its no-op logger and the broker silent.
LOG4J_SLF4J_BINDING = "log4j-slf4j-impl"
# Pinned because Maven 3.8 would otherwise pick whatever the plugin metadata says.
DEPENDENCY_PLUGIN_VERSION = "3.8.1"

INSTALL_HINT = "apt-get install -y openjdk-17-jre-headless maven"
DEFAULT_DETACHED_PORT = 9092
LOG_TAIL_LINES = 30

_MARKER = ".installed.json"
_STATE_FILE = "broker-state.json"
_PASSWORD_FILE = "sasl-password"
_DETACHED_INFO = "broker.json"
# Java accepts a single `dir/*` classpath entry and expands it itself.
_CLASSPATH = "libs/*"
# Kafka's property values and the JAAS line both need quoting-safe credentials.
_CREDENTIAL_RE = re.compile(r"^[A-Za-z0-9._~+/=@:-]{1,256}$")
_ONE_YEAR_MS = 365 * 24 * 3600 * 1000


class BrokerError(RuntimeError):
    """The local broker could not be installed, started, stopped or reached."""


def _quiet(message: str) -> None:
    """Default progress callback: say nothing."""


# --------------------------------------------------------------------------- install


def default_cache_dir() -> Path:
    """Return the cache root: ``$CHORUS_CACHE`` or ``~/.cache/chorus-lab``."""
    env = os.environ.get("CHORUS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "chorus-lab"


def install_dir(cache_dir: Path | None = None) -> Path:
    """Return where ``install`` puts the pinned broker (it may not exist yet)."""
    return (cache_dir or default_cache_dir()) / f"kafka-{KAFKA_VERSION}"


def _pinned() -> dict[str, str]:
    return {
        "kafka": KAFKA_VERSION,
        "scala": SCALA_VERSION,
        "log4j": LOG4J_VERSION,
        "slf4j_binding": LOG4J_SLF4J_BINDING,
    }


def is_installed(cache_dir: Path | None = None) -> bool:
    """Tell whether the pinned broker is fully installed (the marker matches the pins)."""
    marker = install_dir(cache_dir) / _MARKER
    try:
        return bool(json.loads(marker.read_text())["pinned"] == _pinned())
    except (OSError, ValueError, KeyError, TypeError):
        return False


_TOOL_HINTS = {
    "java": f"the local Kafka broker needs Java 17+ and Maven: {INSTALL_HINT}",
    "mvn": f"the local Kafka broker needs Java 17+ and Maven: {INSTALL_HINT}",
    "openssl": "the SASL_SSL listener's certificate is made with it: apt-get install -y openssl",
    "setsid": "a detached broker is started with it: apt-get install -y util-linux",
}


def require_tools(*names: str) -> None:
    """Raise ``BrokerError`` naming what to install if a command-line tool is missing."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        hints = list(dict.fromkeys(_TOOL_HINTS.get(name, f"install {name}") for name in missing))
        raise BrokerError(f"{', '.join(missing)} not found on PATH; {'; '.join(hints)}")


def install(cache_dir: Path | None = None, progress: Callable[[str], None] = _quiet) -> Path:
    """Install the pinned Apache Kafka broker jars and return the install directory.

    Resolves ``org.apache.kafka:kafka_2.13`` plus a log4j2 backend from Maven Central
    with ``mvn dependency:copy-dependencies`` into ``<cache>/kafka-<version>/libs``.
    Idempotent: a marker written only after success makes later calls return at once,
    and a file lock keeps two processes from installing into the same place together.

    Example::

        home = install(progress=print)   # first call: ~45 MB from Maven Central, ~10 s
    """
    target = install_dir(cache_dir)
    if is_installed(cache_dir):
        return target
    require_tools("java", "mvn")
    target.mkdir(parents=True, exist_ok=True)
    with _file_lock(target / ".install.lock"):
        if is_installed(cache_dir):  # another process finished while we waited
            return target
        libs = target / "libs"
        # A previous failed run may have left a partial or stale set of jars.
        shutil.rmtree(libs, ignore_errors=True)
        (target / "pom.xml").write_text(_pom_xml())
        _write_log_config(target)
        progress(f"Resolving Apache Kafka {KAFKA_VERSION} from Maven Central into {target} ...")
        started = time.monotonic()
        command = [
            "mvn", "-q", "-B", "-f", str(target / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}",
            "-DincludeScope=runtime",
        ]
        result = subprocess.run(command, cwd=target, capture_output=True, text=True)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip().splitlines()
            raise BrokerError(
                f"mvn could not resolve Apache Kafka {KAFKA_VERSION} (exit {result.returncode}):\n"
                + "\n".join(output[-LOG_TAIL_LINES:])
            )
        jars = sorted(p.name for p in libs.glob("*.jar"))
        if not any(name.startswith(f"kafka_{SCALA_VERSION}-") for name in jars):
            raise BrokerError(f"mvn finished but no kafka_{SCALA_VERSION} jar is in {libs}")
        marker = {"pinned": _pinned(), "jars": len(jars), "seconds": round(time.monotonic() - started, 1)}
        (target / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        progress(f"Installed {len(jars)} jars in {marker['seconds']} s.")
    return target


def _pom_xml() -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by chorus_lab.broker.install: the classpath of a local Kafka broker. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>chorus-lab.local</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{SCALA_VERSION}</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <!-- The POM carries slf4j-api only; without a backend the broker logs nothing. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>{LOG4J_SLF4J_BINDING}</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>{DEPENDENCY_PLUGIN_VERSION}</version>
      </plugin>
    </plugins>
  </build>
</project>
"""


# Properties, not YAML: log4j2's YAML support would need jackson-dataformat-yaml too.
# The log directory comes from a system property so one install serves every data dir.
_LOG4J2_PROPERTIES = """\
# Written by chorus_lab.broker.install.
status = warn
name = chorus-lab-broker
# Kafka's own shutdown hook stops the broker; log4j's would only warn when a thread
# first logs during JVM shutdown. The file appender flushes every line anyway.
shutdownHook = disable

appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = ${sys:chorus.broker.logdir}/server.log
appender.file.filePattern = ${sys:chorus.broker.logdir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3

rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file

# One line per request or state change would drown everything else.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.requestchannel.name = kafka.network.RequestChannel$
logger.requestchannel.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""


def _write_log_config(home: Path) -> Path:
    """Write the log4j2 config unless it is already current; return its path.

    Also called on every start, so a changed config reaches existing installs
    without another Maven run.
    """
    path = home / "log4j2.properties"
    try:
        if path.read_text() == _LOG4J2_PROPERTIES:
            return path
    except OSError:
        pass
    # Replace atomically: another broker may be starting from the same install.
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    scratch.write_text(_LOG4J2_PROPERTIES)
    os.replace(scratch, path)
    return path


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- info


@dataclass(frozen=True)
class BrokerInfo:
    """How to reach a running local broker.

    ``sasl_password`` is excluded from ``repr`` so logging an info object is safe.
    """

    bootstrap: str
    data_dir: Path
    log_file: Path
    pid: int | None = None
    sasl_bootstrap: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    proxied_bootstrap: str | None = None
    # Where a TCP proxy on ``proxied_bootstrap`` must forward to.
    proxy_upstream: str | None = None

    @property
    def bus_url(self) -> str:
        """The ``--bus`` URL of the plaintext listener, e.g. ``kafka://127.0.0.1:9092``."""
        return f"kafka://{self.bootstrap}"

    def client_config(self) -> dict[str, str]:
        """Return confluent-kafka settings for the plaintext listener."""
        return {"bootstrap.servers": self.bootstrap}

    def sasl_client_config(self) -> dict[str, str]:
        """Return confluent-kafka settings for the SASL_SSL/PLAIN listener (with the secret)."""
        if not (self.sasl_bootstrap and self.sasl_username and self.sasl_password and self.ca_file):
            raise BrokerError("this broker was started without a SASL_SSL listener")
        return {
            "bootstrap.servers": self.sasl_bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": "PLAIN",
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
            "ssl.ca.location": str(self.ca_file),
        }

    def to_public_dict(self) -> dict[str, Any]:
        """Return the fields as JSON-ready values, without the password."""
        data = asdict(self)
        del data["sasl_password"]
        return {key: (str(value) if isinstance(value, Path) else value) for key, value in data.items()}


# --------------------------------------------------------------------------- broker


@dataclass
class BrokerConfig:
    """Settings of one local broker. Port 0 means "pick a free loopback port".

    Ports picked on first start are remembered in the data directory, so a restart
    (even by a new process) keeps its addresses; the controller port must not change
    because the KRaft voter set records it.
    """

    data_dir: Path
    port: int = 0
    controller_port: int = 0
    sasl: bool = False
    sasl_port: int = 0
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    # Where clients of the PROXIED listener connect (a TcpProxy listens there).
    proxy_port: int | None = None
    # The broker's own end of the PROXIED listener, which the proxy forwards to.
    proxied_port: int = 0
    heap_mb: int = 512
    cache_dir: Path | None = None
    # False: the JVM gets SIGTERM when the thread that started it dies, so a killed
    # test run leaves no orphan. True: it runs in its own session and outlives us.
    detached: bool = False


class LocalBroker:
    """A single-node KRaft Apache Kafka broker run as a child process (or detached).

    Example::

        install()
        with LocalBroker(BrokerConfig(data_dir=Path("/tmp/k"))) as broker:
            print(broker.info.bootstrap)
    """

    def __init__(self, config: BrokerConfig) -> None:
        self.config = replace(config, data_dir=Path(config.data_dir).resolve())
        # Attached brokers are our child process; detached ones are not (see _launch).
        self._proc: subprocess.Popen[bytes] | None = None
        self._daemon_pid: int | None = None
        self._resolved: BrokerConfig | None = None
        # Where this run's part of the log starts (the log is appended to across runs).
        self._log_offset = 0

    @property
    def data_dir(self) -> Path:
        """Everything of this broker: config, KRaft logs, its log file, TLS, the secret."""
        return self.config.data_dir

    @property
    def log_file(self) -> Path:
        """The broker's log4j log (``server.log`` in the data directory)."""
        return self.data_dir / "server.log"

    @property
    def console_file(self) -> Path:
        """The JVM's stdout/stderr: crashes and errors from before logging starts."""
        return self.data_dir / "broker.out"

    @property
    def ca_file(self) -> Path:
        """The self-signed certificate clients of the SASL_SSL listener must trust."""
        return self.data_dir / "tls" / "ca.pem"

    @property
    def pid(self) -> int | None:
        """The JVM's process id while it runs."""
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        if self._daemon_pid is not None and _is_broker_of(self._daemon_pid, self.data_dir):
            return self._daemon_pid
        return None

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def info(self) -> BrokerInfo:
        """How to reach this broker; valid after ``start``."""
        cfg = self._resolved
        if cfg is None:
            raise BrokerError("the broker has not been started")
        return BrokerInfo(
            bootstrap=f"127.0.0.1:{cfg.port}",
            data_dir=self.data_dir,
            log_file=self.log_file,
            pid=self.pid,
            sasl_bootstrap=f"127.0.0.1:{cfg.sasl_port}" if cfg.sasl else None,
            sasl_username=cfg.sasl_username if cfg.sasl else None,
            sasl_password=cfg.sasl_password if cfg.sasl else None,
            ca_file=self.ca_file if cfg.sasl else None,
            proxied_bootstrap=f"127.0.0.1:{cfg.proxy_port}" if cfg.proxy_port else None,
            proxy_upstream=f"127.0.0.1:{cfg.proxied_port}" if cfg.proxy_port else None,
        )

    def start(self, timeout: float = 90, progress: Callable[[str], None] = _quiet) -> BrokerInfo:
        """Format storage if needed, launch the JVM and wait until it answers metadata requests.

        Raises ``BrokerError`` with the tail of the broker log if the JVM exits early or
        the broker is not ready within ``timeout`` seconds (the JVM is then stopped).
        """
        if self.pid is not None:
            return self.info
        home = install_dir(self.config.cache_dir)
        if not is_installed(self.config.cache_dir):
            raise BrokerError(f"Apache Kafka {KAFKA_VERSION} is not installed in {home}; call install() first")
        require_tools("java")
        _write_log_config(home)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cfg = self._resolved = self._resolve()
        _require_free_ports(cfg)
        if cfg.sasl:
            _make_certificate(self.data_dir / "tls", self.ca_file)
        properties = self.data_dir / "server.properties"
        _write_private(properties, _server_properties(cfg, self.data_dir, self.ca_file))
        deadline = time.monotonic() + timeout
        if not (self._log_dir / "meta.properties").exists():
            progress("Formatting KRaft storage ...")
            self._format(home, properties, timeout=max(1.0, deadline - time.monotonic()))
        progress(f"Starting Apache Kafka {KAFKA_VERSION} on 127.0.0.1:{cfg.port} ...")
        command = [*self._java(home, cfg.heap_mb), "kafka.Kafka", str(properties)]
        self._log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self._launch(home, command, detached=cfg.detached, deadline=deadline)
        try:
            self._wait_ready(deadline)
        except BaseException:
            self._kill_quietly()
            raise
        progress(f"Kafka is ready on {self.info.bootstrap} (log: {self.log_file}).")
        return self.info

    def stop(self, timeout: float = 30) -> None:
        """Stop the JVM: SIGTERM (a clean shutdown), then SIGKILL after ``timeout`` seconds."""
        proc, self._proc = self._proc, None
        pid, self._daemon_pid = self._daemon_pid, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        elif pid is not None:
            _terminate(pid, self.data_dir, timeout)

    def restart(self, timeout: float = 90) -> BrokerInfo:
        """Stop and start again with the same ports and data."""
        self.stop()
        return self.start(timeout=timeout)

    # -- internals

    @property
    def _log_dir(self) -> Path:
        return self.data_dir / "kraft-logs"

    def _resolve(self) -> BrokerConfig:
        """Fill in ports and credentials, reusing what an earlier start remembered."""
        if self._resolved is not None:
            return self._resolved
        state_path = self.data_dir / _STATE_FILE
        try:
            state: dict[str, Any] = json.loads(state_path.read_text())
        except (OSError, ValueError):
            state = {}
        cfg = replace(self.config)
        # The proxy's port is chosen by the caller and must not be handed out again.
        taken: set[int] = {cfg.proxy_port} if cfg.proxy_port else set()

        def pick(configured: int, key: str) -> int:
            port = configured or int(state.get(key) or 0) or free_loopback_port(exclude=taken)
            taken.add(port)
            return port

        cfg.port = pick(cfg.port, "port")
        cfg.controller_port = pick(cfg.controller_port, "controller_port")
        if cfg.sasl:
            cfg.sasl_port = pick(cfg.sasl_port, "sasl_port")
        if cfg.proxy_port is not None:
            cfg.proxied_port = pick(cfg.proxied_port, "proxied_port")
        if cfg.sasl:
            password_file = self.data_dir / _PASSWORD_FILE
            cfg.sasl_username = cfg.sasl_username or state.get("sasl_username") or f"chorus-{secrets.token_hex(4)}"
            if cfg.sasl_password is None and password_file.exists():
                cfg.sasl_password = password_file.read_text().strip()
            cfg.sasl_password = cfg.sasl_password or secrets.token_urlsafe(32)
            for name, value in (("sasl_username", cfg.sasl_username), ("sasl_password", cfg.sasl_password)):
                if not _CREDENTIAL_RE.match(value):
                    # Never echo the value: it may be the secret.
                    raise BrokerError(f"{name} may only hold letters, digits and ._~+/=@:- (1-256 chars)")
            _write_private(password_file, cfg.sasl_password + "\n")
            state["sasl_username"] = cfg.sasl_username
        for key in ("port", "controller_port", "sasl_port", "proxied_port"):
            if getattr(cfg, key):
                state[key] = getattr(cfg, key)
        state_path.write_text(json.dumps(state, indent=2) + "\n")
        return cfg

    def _java(self, home: Path, heap_mb: int) -> list[str]:
        return [
            "java",
            f"-Xmx{heap_mb}m",
            "-Xss1m",
            # Two cores and a small heap: the serial collector costs least here.
            "-XX:+UseSerialGC",
            "-XX:MaxInlineLevel=15",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}",
            f"-Dchorus.broker.logdir={self.data_dir}",
            "-cp",
            _CLASSPATH,
        ]

    def _format(self, home: Path, properties: Path, timeout: float) -> None:
        command = [
            *self._java(home, 256),
            "kafka.tools.StorageTool",
            "format",
            "-t", random_cluster_id(),
            "-c", str(properties),
            "--standalone",
        ]
        try:
            result = subprocess.run(command, cwd=home, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(f"formatting KRaft storage took longer than {timeout:.0f} s") from exc
        if result.returncode != 0:
            raise BrokerError(
                f"kafka.tools.StorageTool format failed (exit {result.returncode}):\n"
                + self._redact((result.stdout + result.stderr).strip())
            )

    def _launch(self, home: Path, command: list[str], *, detached: bool, deadline: float) -> None:
        with open(self.console_file, "ab") as console:
            if not detached:
                # setpriv: the JVM gets SIGTERM when the thread that started it dies, so
                # a killed test run leaves no orphan broker behind.
                prefix = ["setpriv", "--pdeathsig", "TERM"] if shutil.which("setpriv") else []
                self._proc = subprocess.Popen(
                    [*prefix, *command], cwd=home, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT
                )
                return
            # `setsid -f` forks the JVM into its own session and returns at once, so the
            # broker is not our child: no zombie, nothing tied to this process's life.
            require_tools("setsid")
            subprocess.run(
                ["setsid", "-f", *command],
                cwd=home, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, check=True,
            )
        while (pid := _find_broker(self.data_dir)) is None:
            if time.monotonic() >= deadline:
                raise BrokerError(self._failure("the detached broker did not appear"))
            time.sleep(0.05)
        self._daemon_pid = pid

    def _wait_ready(self, deadline: float) -> None:
        assert self._resolved is not None
        address = ("127.0.0.1", self._resolved.port)
        # Waiting for the TCP port first keeps librdkafka from logging refused connects.
        while not _port_open(address, timeout=0.5):
            self._raise_if_exited()
            if time.monotonic() >= deadline:
                raise BrokerError(self._failure("the broker did not open its port in time"))
            time.sleep(0.1)
        while True:
            self._raise_if_exited()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(self._failure("the broker did not become ready in time"))
            if _metadata_answers({"bootstrap.servers": self.info.bootstrap}, timeout=min(2.0, remaining)) is None:
                return
            time.sleep(0.1)

    def _raise_if_exited(self) -> None:
        if self._proc is not None:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise BrokerError(self._failure(f"the broker exited with code {code} during start-up"))
        elif self.pid is None:
            self._daemon_pid = None
            raise BrokerError(self._failure("the broker exited during start-up"))

    def _failure(self, what: str) -> str:
        # The log ends with shutdown chatter, so the cause is quoted from the first errors.
        errors, tail = _log_excerpt(self.log_file, self._log_offset, LOG_TAIL_LINES)
        parts = [f"{what}."]
        if errors:
            parts += ["First errors in the broker log:", errors]
        parts += [f"Last lines of {self.log_file}:", tail]
        console = _tail(self.console_file, LOG_TAIL_LINES)
        if console.strip():
            parts += [f"Last lines of {self.console_file}:", console]
        return self._redact("\n".join(parts))

    def _redact(self, text: str) -> str:
        secret = self._resolved.sasl_password if self._resolved else None
        return text.replace(secret, "[hidden]") if secret else text

    def _kill_quietly(self) -> None:
        proc, self._proc = self._proc, None
        pid, self._daemon_pid = self._daemon_pid, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        elif pid is not None:
            _terminate(pid, self.data_dir, timeout=0)


def _server_properties(cfg: BrokerConfig, data_dir: Path, ca_file: Path) -> str:
    listeners = [f"PLAINTEXT://127.0.0.1:{cfg.port}", f"CONTROLLER://127.0.0.1:{cfg.controller_port}"]
    advertised = [f"PLAINTEXT://127.0.0.1:{cfg.port}"]
    protocols = ["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT"]
    if cfg.sasl:
        listeners.append(f"SASL_SSL://127.0.0.1:{cfg.sasl_port}")
        advertised.append(f"SASL_SSL://127.0.0.1:{cfg.sasl_port}")
        protocols.append("SASL_SSL:SASL_SSL")
    if cfg.proxy_port is not None:
        listeners.append(f"PROXIED://127.0.0.1:{cfg.proxied_port}")
        # Clients are told to come back through the proxy, so cutting it cuts them off.
        advertised.append(f"PROXIED://127.0.0.1:{cfg.proxy_port}")
        protocols.append("PROXIED:PLAINTEXT")
    lines = [
        "# Written by chorus_lab.broker; rewritten on every start.",
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{cfg.controller_port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        f"listeners={','.join(listeners)}",
        f"advertised.listeners={','.join(advertised)}",
        f"listener.security.protocol.map={','.join(protocols)}",
        f"log.dirs={data_dir / 'kraft-logs'}",
        # One node: every internal topic must be satisfied by a single replica.
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        # 50 partitions each (the default) only spread load over brokers we do not have.
        "offsets.topic.num.partitions=6",
        "transaction.state.log.num.partitions=6",
        # The app creates its topics with explicit settings; a typo must not create one.
        "auto.create.topics.enable=false",
        "num.partitions=6",
        # The simulator stamps events with simulated times, possibly ahead of the clock.
        f"log.message.timestamp.after.max.ms={_ONE_YEAR_MS}",
        # Small machine: fewer threads, and a log-cleaner buffer that fits a 512 MB heap.
        "num.network.threads=2",
        "num.io.threads=4",
        "log.cleaner.dedupe.buffer.size=33554432",
    ]
    if cfg.sasl:
        lines += [
            "sasl.enabled.mechanisms=PLAIN",
            "listener.name.sasl_ssl.plain.sasl.jaas.config="
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{cfg.sasl_username}="{cfg.sasl_password}";',
            # PEM keystore: one file with the certificate and an unencrypted PKCS#8 key,
            # so no keystore password is involved.
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={ca_file.parent / 'broker.pem'}",
        ]
    return "\n".join(lines) + "\n"


def _make_certificate(tls_dir: Path, ca_file: Path) -> None:
    """Create a self-signed certificate for 127.0.0.1/localhost unless one exists."""
    keystore = tls_dir / "broker.pem"
    if keystore.exists() and ca_file.exists():
        return
    require_tools("openssl")
    tls_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(tls_dir, 0o700)
    key = tls_dir / "broker.key"
    command = [
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-noenc",
        "-keyout", str(key), "-out", str(ca_file), "-days", "3650",
        "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BrokerError(f"openssl could not create the broker certificate:\n{result.stderr.strip()}")
    _write_private(keystore, ca_file.read_text() + key.read_text())
    key.unlink()


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it may hold a secret)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to an existing file
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            return b"\n".join(handle.read().splitlines()[-lines:]).decode("utf-8", "replace")
    except OSError:
        return "(no log)"


_ERROR_LINE = re.compile(r"^\[[^\]]+\] (ERROR|FATAL) ")


def _log_excerpt(path: Path, offset: int, lines: int, max_errors: int = 5) -> tuple[str, str]:
    """Return (the first ERROR lines with their exception line, the last lines) since ``offset``."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            # A rolled-over log is smaller than the offset: read it from the start.
            start = offset if offset <= size else 0
            handle.seek(max(start, size - 8 * 1024 * 1024))
            text = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "", "(no log)"
    errors: list[str] = []
    for index, line in enumerate(text):
        if _ERROR_LINE.match(line):
            errors.append(line)
            # The next line of a stack trace names the exception and its message.
            if index + 1 < len(text) and not text[index + 1].startswith("["):
                errors.append("    " + text[index + 1].strip())
            if len(errors) >= 2 * max_errors:
                break
    return "\n".join(errors), "\n".join(text[-lines:])


def random_cluster_id() -> str:
    """Return a KRaft cluster id, as ``kafka-storage.sh random-uuid`` would.

    Generated in Python to save a JVM start; Kafka's rule is a URL-safe base64 of 16
    random bytes, without padding and never starting with ``-``.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


# --------------------------------------------------------------------------- network


def free_loopback_port(exclude: set[int] | frozenset[int] = frozenset()) -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in exclude:
            return port


def _require_free_ports(cfg: BrokerConfig) -> None:
    """Fail early, and clearly, if one of the broker's ports is taken."""
    ports = {"port": cfg.port, "controller_port": cfg.controller_port}
    if cfg.sasl:
        ports["sasl_port"] = cfg.sasl_port
    if cfg.proxy_port is not None:
        ports["proxied_port"] = cfg.proxied_port
    for name, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As the JVM does: ports in TIME_WAIT are usable, only a listener conflicts.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                raise BrokerError(
                    f"127.0.0.1:{port} ({name}) is already in use ({exc.strerror}); "
                    "stop what listens there or choose another port (0 picks a free one)"
                ) from exc


def _port_open(address: tuple[str, int], timeout: float) -> bool:
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def _metadata_answers(conf: Mapping[str, str], timeout: float) -> str | None:
    """Ask for cluster metadata until ``timeout``; return None once a live broker answers.

    Otherwise return why not, from the client's own error reports: an authentication
    failure ends the wait at once, since retrying cannot fix wrong credentials.
    """
    # Imported here so that `chorus-lab --help` does not pay for librdkafka.
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    errors: list[KafkaError] = []
    # log_level 0: the errors are reported through error_cb, not printed to stderr.
    settings: dict[str, Any] = {**conf, "error_cb": errors.append, "log_level": 0}
    admin = AdminClient(settings)
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            metadata = admin.list_topics(timeout=max(0.05, min(1.0, remaining)))
        except KafkaException as exc:
            why = exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else str(exc)
        else:
            # A broker that is up but still fenced answers with no live brokers.
            if metadata.brokers:
                return None
            why = "no live broker in the metadata yet"
        admin.poll(0)  # error_cb runs only inside poll()
        auth = [e for e in errors if e.code() == KafkaError._AUTHENTICATION]
        if auth:
            return auth[-1].str()
        if time.monotonic() >= deadline:
            reported = list(dict.fromkeys(e.str() for e in errors))[-3:]
            return "; ".join([*reported, why])


def check_reachable(conf: Mapping[str, str], timeout: float = 10) -> None:
    """Raise ``BrokerError`` unless a broker answers with these client settings in time.

    The message names the client's own errors (e.g. an authentication failure) and
    never contains the ``sasl.password`` value.

    Example::

        check_reachable(info.sasl_client_config(), timeout=10)
    """
    why = _metadata_answers(conf, timeout)
    if why is None:
        return
    secret = conf.get("sasl.password")
    if secret:
        why = why.replace(secret, "[hidden]")
    raise BrokerError(f"Kafka at {conf.get('bootstrap.servers')} is not reachable: {why}")


# --------------------------------------------------------------------------- detached


def default_home() -> Path:
    """Where the CLI keeps its detached broker: ``.chorus/broker`` under the working dir."""
    return Path.cwd() / ".chorus" / "broker"


def start_detached(
    home: Path | None = None,
    *,
    sasl: bool = False,
    port: int = DEFAULT_DETACHED_PORT,
    timeout: float = 90,
    cache_dir: Path | None = None,
    progress: Callable[[str], None] = _quiet,
) -> BrokerInfo:
    """Start a broker that outlives this process, or return the one already running.

    Installs Kafka if needed. Writes ``home/broker.json`` (no password; with ``sasl``
    the password is in ``home/sasl-password``, mode 0600). Data, ports and credentials
    in ``home`` survive a stop and start. ``port=0`` picks a free port the first time.

    Example::

        info = start_detached(Path(".chorus/broker"), sasl=True, progress=print)
        print(info.bus_url)
    """
    home = (home or default_home()).resolve()
    home.mkdir(parents=True, exist_ok=True)
    with _file_lock(home / ".lock"):
        running = status(home)
        if running is not None and (running.sasl_bootstrap or not sasl):
            progress(f"Kafka is already running on {running.bootstrap} (pid {running.pid}).")
            return running
        # Alive but without the SASL listener asked for, or not answering, or unrecorded
        # (its starter was killed): replace it, keeping the data.
        if _stop_running(home, timeout=30):
            progress("Stopped the previous broker in this directory.")
        install(cache_dir, progress=progress)
        config = BrokerConfig(data_dir=home, port=port, sasl=sasl, cache_dir=cache_dir, detached=True)
        info = LocalBroker(config).start(timeout=timeout, progress=progress)
        scratch = home / f".{_DETACHED_INFO}.tmp"
        scratch.write_text(json.dumps(info.to_public_dict(), indent=2) + "\n")
        os.replace(scratch, home / _DETACHED_INFO)
        return info


def stop_detached(home: Path | None = None, timeout: float = 30) -> bool:
    """Stop the detached broker in ``home`` (SIGTERM, then SIGKILL); False if none ran."""
    home = (home or default_home()).resolve()
    if not home.exists():
        return False
    with _file_lock(home / ".lock"):
        return _stop_running(home, timeout)


def status(home: Path | None = None) -> BrokerInfo | None:
    """Return the detached broker's info if its process is alive and it answers, else None."""
    home = (home or default_home()).resolve()
    try:
        data = json.loads((home / _DETACHED_INFO).read_text())
        pid = int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _is_broker_of(pid, home):
        return None
    if _metadata_answers({"bootstrap.servers": data["bootstrap"]}, timeout=5) is not None:
        return None
    password_file = home / _PASSWORD_FILE
    password = password_file.read_text().strip() if data.get("sasl_bootstrap") and password_file.exists() else None
    return BrokerInfo(
        bootstrap=data["bootstrap"],
        data_dir=Path(data["data_dir"]),
        log_file=Path(data["log_file"]),
        pid=pid,
        sasl_bootstrap=data.get("sasl_bootstrap"),
        sasl_username=data.get("sasl_username"),
        sasl_password=password,
        ca_file=Path(data["ca_file"]) if data.get("ca_file") else None,
        proxied_bootstrap=data.get("proxied_bootstrap"),
        proxy_upstream=data.get("proxy_upstream"),
    )


def _running_pid(home: Path) -> int | None:
    """The pid of the Kafka that runs from ``home``, found via broker.json or /proc."""
    try:
        pid = int(json.loads((home / _DETACHED_INFO).read_text())["pid"])
        if _is_broker_of(pid, home):
            return pid
    except (OSError, ValueError, KeyError, TypeError):
        pass
    # broker.json is written once the broker is ready; a starter killed before that
    # leaves a broker that only its command line identifies.
    return _find_broker(home)


def _find_broker(data_dir: Path) -> int | None:
    """Find the running Kafka whose server.properties is in ``data_dir``."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_broker_of(int(entry.name), data_dir):
            return int(entry.name)
    return None


def _is_broker_of(pid: int, data_dir: Path) -> bool:
    # Matching the command line keeps a recycled pid from getting the broker's SIGTERM.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and b"kafka.Kafka" in cmdline and str(data_dir / "server.properties").encode() in cmdline


def _stop_running(home: Path, timeout: float) -> bool:
    pid = _running_pid(home)
    (home / _DETACHED_INFO).unlink(missing_ok=True)
    if pid is None:
        return False
    _terminate(pid, home, timeout)
    return True


def _terminate(pid: int, data_dir: Path, timeout: float) -> None:
    """SIGTERM the broker, then SIGKILL it if it is still there after ``timeout`` seconds.

    ``timeout=0`` sends SIGKILL at once.
    """
    steps = [(signal.SIGTERM, timeout)] if timeout > 0 else []
    for sig, wait in [*steps, (signal.SIGKILL, 10.0)]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while _is_broker_of(pid, data_dir):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        else:
            return
    raise BrokerError(f"the broker (pid {pid}) did not exit after SIGKILL")
