#!/usr/bin/env bash
# Install storyboard with its test extras into .venv and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
# Tests run on the CPU: take torch 2.13.0 (a CPU build where one lies on disk) unless the venv already has a torch;
# an unpinned torch would pull a multi-GB CUDA build. GPU users install '.[gpu]' the normal way.
.venv/bin/python -c 'import torch' 2>/dev/null || .venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
./scripts/setup.sh '.[test]'
.venv/bin/python -m ruff check storyboard tests bench
# The same suite everywhere (here and in CI). Tests marked slow (the 20-kill SIGKILL soak, ~5 min) are left out;
# `scripts/test.sh -m ""` runs them too (a later -m wins).
exec .venv/bin/python -m pytest -q -m "not slow" "$@"
