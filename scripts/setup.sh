#!/usr/bin/env bash
# Create .venv and install storyboard into it (idempotent). Extra pip args are passed on,
# e.g. `scripts/setup.sh '.[gpu]'` on a GPU box.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-.}"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$target"
