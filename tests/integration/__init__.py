"""Trio-level tests: slots, runners, the owner, the API and the keeper, in one process with real children."""
