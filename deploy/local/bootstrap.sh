#!/usr/bin/env bash
# Makes .venv from uv.lock, installing uv (into .run/tools) and python3-venv when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

export UV_PYTHON_DOWNLOADS=never   # only PyPI is reachable: use the machine's Python 3.11+
uv_bin=$(command -v uv || true)
if [ -z "$uv_bin" ]; then
    uv_bin=.run/tools/bin/uv
    if [ ! -x "$uv_bin" ]; then
        echo "bootstrap: installing uv into .run/tools"
        if ! python3 -m venv .run/tools >/dev/null 2>&1; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
            rm -rf .run/tools && python3 -m venv .run/tools
        fi
        .run/tools/bin/pip install -q uv
    fi
fi
"$uv_bin" sync --locked --python python3 --quiet
