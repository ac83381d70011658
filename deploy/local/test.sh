#!/usr/bin/env bash
# `make test`: a private RabbitMQ and PostgreSQL on free ports for this run, the whole test
# suite against them, then the servers stopped; exits with pytest's code.
set -uo pipefail
cd "$(dirname "$0")/../.."

stack=.run/test-stack
python3 deploy/local/stack.py browser --dir "$stack" || exit 1  # for tests/integration/test_ui_browser.py
python3 deploy/local/stack.py purge --dir "$stack" >/dev/null 2>&1 || true
python3 deploy/local/stack.py up --dir "$stack" --ports free || exit 1
trap 'python3 deploy/local/stack.py purge --dir "$stack"' EXIT

set -a; . "$stack/env"; set +a
.venv/bin/python -m pytest "$@"
