#!/usr/bin/env bash
# `make screenshots`: the browser tests on a private stack, writing a PNG of each screen to docs/ui/.
set -uo pipefail
cd "$(dirname "$0")/../.."

stack=.run/screenshots-stack
python3 deploy/local/stack.py browser --dir "$stack" || exit 1
python3 deploy/local/stack.py up --dir "$stack" --ports free || exit 1
trap 'python3 deploy/local/stack.py purge --dir "$stack"' EXIT
set -a; . "$stack/env"; set +a
mkdir -p docs/ui
MAIL_SCREENSHOTS_DIR=docs/ui .venv/bin/python -m pytest -q tests/integration/test_ui_browser.py
