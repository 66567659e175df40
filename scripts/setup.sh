#!/usr/bin/env bash
# Set up everything chorus-lab needs, idempotently: the Python environment in .venv and,
# with --with-kafka, a Java runtime, Maven and the Apache Kafka broker jars (cached in
# ~/.cache/chorus-lab, outside git); with --with-browser, Debian's Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

with_kafka=0
with_browser=0
for arg in "$@"; do
  case "$arg" in
    --with-kafka) with_kafka=1 ;;
    --with-browser) with_browser=1 ;;
    *) echo "setup.sh: unknown option $arg (use --with-kafka, --with-browser)" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

apt_install() {
  # Only as root on Debian-like systems; otherwise say what is missing.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "apt-get install $*"
    if [ ! -f /tmp/.chorus-apt-updated ]; then apt-get update -qq && touch /tmp/.chorus-apt-updated; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "setup.sh: please install: $* (not root, or no apt-get)" >&2
    exit 1
  fi
}

python=""
for candidate in python3.11 python3.12 python3.13 python3; do
  if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    python="$candidate"; break
  fi
done
[ -n "$python" ] || { echo "setup.sh: Python 3.11 or newer is required" >&2; exit 1; }

stamp=".venv/.chorus-installed"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $python"
  "$python" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing Python packages (pyproject.toml)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi

if [ "$with_kafka" = 1 ]; then
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  command -v openssl >/dev/null || apt_install openssl
  .venv/bin/chorus-lab broker install
fi

if [ "$with_browser" = 1 ]; then
  command -v chromium >/dev/null || apt_install chromium
fi
