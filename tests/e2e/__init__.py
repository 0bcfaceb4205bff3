"""End-to-end tests: a real `supervisor run` (and the CLI) in subprocesses."""
