#!/usr/bin/env bash
# The main job: set everything up on a fresh machine, demonstrate the library.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
PY=.venv/bin/python

echo "== 1. the sn library in one minute (python -m sn) =="
"$PY" -m sn
