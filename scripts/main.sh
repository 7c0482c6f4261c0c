#!/usr/bin/env bash
# The main job: set everything up, then run the Llama completions notebook headless
# against the local workspace on the real SmolLM2-135M-Instruct model. The executed
# notebook is written to out/llama_completions-local.ipynb; a summary is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/ptdeploy run notebooks/llama_completions.ipynb \
  -f parameters/llama_completions/local.yaml --out out "$@"
