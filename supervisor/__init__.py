"""supervisor: a trio-native supervisor for long-running agents.

`AgentContext` is imported on first use (PEP 562), so that ``python -m supervisor status``
and the other client commands do not pay for trio (docs/api.md#the-cli-client).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not `typing`'s: the CLI client does not import typing (3 ms)
if TYPE_CHECKING:
    from typing import Any

    from supervisor.context import AgentContext

__version__ = "0.1.0"
version = __version__

__all__ = ["AgentContext", "__version__", "version"]


def __getattr__(name: str) -> Any:
    if name == "AgentContext":
        from supervisor.context import AgentContext

        return AgentContext
    raise AttributeError(f"module 'supervisor' has no attribute {name!r}")
