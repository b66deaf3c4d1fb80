"""Query-string parsing shared by the control and REST endpoints."""

from __future__ import annotations

from urllib.parse import parse_qs

__all__ = ["QueryParams"]


class QueryParams:
    """Query parameters (last value wins); subclasses add typed getters and their own errors."""

    def __init__(self, query: str) -> None:
        self._q = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}

    def text(self, name: str) -> str | None:
        """A parameter, or None when absent or empty."""
        value = self._q.get(name)
        return value if value else None

    def required(self, name: str) -> str:
        """A parameter that must be present."""
        value = self.text(name)
        if value is None:
            raise self.missing(name)
        return value

    def missing(self, name: str) -> Exception:
        """The error for a missing parameter."""
        return ValueError(f"missing parameter {name!r}")
