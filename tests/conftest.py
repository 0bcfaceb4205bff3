"""Shared fixtures: specs built directly, and the autojump clock for trio time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio.testing

from supervisor.manifest import AgentSpec

HERE = Path(__file__).parent


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def make_spec(agent_id: str = "a", **keys: Any) -> AgentSpec:
    """An in-process AgentSpec with the defaults of SPEC §1, rooted in tests/."""
    keys.setdefault("kind", "process" if "command" in keys else "in-process")
    if keys["kind"] == "in-process":
        keys.setdefault("entry", "agents.idle:main")
    keys.setdefault("root", HERE)
    keys.setdefault("cwd", HERE)
    return AgentSpec(id=agent_id, **keys)
