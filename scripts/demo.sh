#!/usr/bin/env bash
# Set up everything and run the main job: the chorus-lab demo (embedded bus by default;
# pass e.g. --bus kafka://127.0.0.1:9092 to use Kafka). Extra arguments go to `chorus-lab demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/chorus-lab demo "$@"
