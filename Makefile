# The two commands a newcomer needs: `make run` and `make test`. Everything else is optional.
SHELL := /bin/bash
PY := .venv/bin/python
export UV_PYTHON_DOWNLOADS := never

.PHONY: run test faults venv lint format schemas bench screenshots demo stack-up stack-down clean

run: venv                       ## the whole stack with a mail catcher, in the foreground
	$(PY) -m deploy.local.run

test: venv lint                 ## set-up plus the whole test suite on a private stack
	deploy/local/test.sh $(PYTEST_ARGS)

faults: venv                   ## the long fault suite (10,000 recipients); `make test` runs the short one
	$(PY) -m tests.faults.suite --long

venv: .venv/.synced
.venv/.synced: pyproject.toml uv.lock
	deploy/local/bootstrap.sh
	touch $@

lint: venv
	.venv/bin/ruff check .

format: venv
	.venv/bin/ruff check --fix . && .venv/bin/ruff format .

schemas: venv                   ## regenerate docs/schemas/ and docs/asyncapi.yaml from shared/messages.py
	$(PY) -m tools.schemas docs/schemas
	$(PY) -m tools.asyncapi docs/asyncapi.yaml

bench: venv                     ## every benchmark in bench/, on a private stack
	deploy/local/bench.sh

screenshots: venv               ## a PNG of each admin screen in docs/ui/ (the browser tests, on a private stack)
	deploy/local/screenshots.sh

demo: venv                      ## publish a sample delivery request to the running stack
	set -a; . .run/stack/env; set +a; $(PY) -m deploy.local.demo

stack-up:
	python3 deploy/local/stack.py up --dir .run/stack --ports default

stack-down:
	python3 deploy/local/stack.py down --dir .run/stack

clean:                          ## stop every stack of this checkout, remove .run/ (and any PostgreSQL data kept outside it) and .venv/
	for dir in .run/*/; do [ -f "$$dir/ports.json" ] && python3 deploy/local/stack.py purge --dir "$$dir"; done; true
	rm -rf .run .venv
