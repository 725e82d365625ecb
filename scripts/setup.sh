#!/usr/bin/env bash
# One-time (idempotent) set-up of a fresh machine: system packages, then a virtual
# environment in .venv with this project installed in editable mode.
# Sourced by scripts/run.sh and scripts/test.sh; safe to run on its own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# gcc builds SN's CPU kernels on first use (sn/native.py; without it SN runs slower torch ops)
APT_PACKAGES=(chromium dataset-fashion-mnist gcc)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "[setup] installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "[setup] warning: Debian packages missing and not root/apt: ${missing[*]}" >&2
        echo "[setup]          (data falls back to torchvision downloads; browser tests are skipped)" >&2
    fi
fi

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $PYTHON"
    "$PYTHON" -m venv .venv
fi
# pip resolves torch/torchvision from the local wheel cache when it has them.
if ! .venv/bin/python -c "import sn, torch, pytorch_lightning, streamlit" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
    echo "[setup] installing the project and its dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[dev]"
    touch .venv/.installed
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
