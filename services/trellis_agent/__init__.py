"""The agent: runs a tenant's activities (processes, containers, pods, HTTP calls) and reports back."""

from trellis_agent.agent import serve

__all__ = ["serve"]
