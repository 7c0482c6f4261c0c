#!/usr/bin/env bash
# The test command: set up (idempotent), lint, then the whole pytest suite, slow cases
# included (pass -m "not slow" for the quick loop). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check lib tests benchmarks notebooks
.venv/bin/ruff format --check lib tests benchmarks
exec .venv/bin/python -m pytest "$@"
