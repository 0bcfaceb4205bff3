"""supervisor: a trio-native supervisor for long-running agents."""

from supervisor.context import AgentContext

__version__ = "0.1.0"
version = __version__

__all__ = ["AgentContext", "__version__", "version"]
