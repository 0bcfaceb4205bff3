# Recipes CI calls; run `just --list` to see them.
set shell := ["bash", "-euo", "pipefail", "-c"]

python := if path_exists(".venv/bin/python") == "true" { ".venv/bin/python" } else { "python3" }

# install the project and its dev tools into .venv
setup:
    test -x .venv/bin/python || python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'

# the whole test suite
test *ARGS:
    {{python}} -m pytest -q -p no:cacheprovider {{ARGS}}

# ruff, including its ASYNC rules
lint:
    {{python}} -m ruff check supervisor tests benchmarks config
    {{python}} -m ruff format --check supervisor tests benchmarks config

# mypy strict on the package
typecheck:
    {{python}} -m mypy

# run the supervisor on the example manifest
run *ARGS:
    {{python}} -m supervisor run config/agents.toml {{ARGS}}

# benchmarks side by side with supervisord (--quick for a smoke run)
bench *ARGS:
    {{python}} benchmarks/run.py {{ARGS}}
