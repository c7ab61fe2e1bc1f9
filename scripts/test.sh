#!/usr/bin/env bash
# Install storyboard with its test extras into .venv and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh '.[test]'
.venv/bin/python -m ruff check storyboard tests bench
exec .venv/bin/python -m pytest -q "$@"
