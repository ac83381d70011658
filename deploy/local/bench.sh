#!/usr/bin/env bash
# `make bench`: every bench/*.py on a private stack; each prints its figures beside its baseline.
set -uo pipefail
cd "$(dirname "$0")/../.."

stack=.run/bench-stack
python3 deploy/local/stack.py up --dir "$stack" --ports free || exit 1
trap 'python3 deploy/local/stack.py down --dir "$stack"' EXIT
set -a; . "$stack/env"; set +a

status=0
shopt -s nullglob
for bench in bench/bench_*.py; do
    echo "== $bench"
    .venv/bin/python "$bench" || status=1
done
exit $status
