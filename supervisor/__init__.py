"""supervisor: a trio-native supervisor for long-running agents.

`AgentContext` is imported on first use (PEP 562), so that ``python -m supervisor status``
and the other client commands do not pay for trio (docs/api.md#the-cli-client).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from supervisor.context import AgentContext

__version__ = "0.1.0"
version = __version__

__all__ = ["AgentContext", "__version__", "version"]


def __getattr__(name: str) -> Any:
    if name == "AgentContext":
        from supervisor.context import AgentContext

        return AgentContext
    raise AttributeError(f"module 'supervisor' has no attribute {name!r}")
