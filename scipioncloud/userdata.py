"""The launch user data: the agent owns its format (agent.userdata); the operator's CLI renders it."""

from agent.userdata import MARKER, UserDataError, parse, render, to_toml

__all__ = ["MARKER", "UserDataError", "parse", "render", "to_toml"]
