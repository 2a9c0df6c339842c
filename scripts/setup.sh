#!/bin/sh
# Create .venv from uv.lock. Needs only python3 (with pip); fetches uv into .tools if absent.
set -eu
cd "$(dirname "$0")/.."
UV="$(command -v uv || true)"
if [ -z "$UV" ]; then
    if [ ! -x .tools/bin/uv ]; then
        echo "installing uv into .tools (once)" >&2
        python3 -m pip install --quiet --disable-pip-version-check --target .tools uv >&2
    fi
    UV=.tools/bin/uv
fi
# --compile-bytecode: every process (each test subprocess, each Ray worker) then imports
# torch and torchvision from bytecode, ~7 s instead of ~18 s where PYTHONDONTWRITEBYTECODE is set.
"$UV" sync --frozen --quiet --compile-bytecode >&2
# Ray's `uv run` hook would rebuild this venv for every Ray session; we call .venv/bin directly.
export RAY_ENABLE_UV_RUN_RUNTIME_ENV=0
