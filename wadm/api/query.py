"""The query string of one request: only the parameters an endpoint knows, each at most once.

A typo (``limt=5``) or a repeated parameter (``limit=5&limit=10000``) is a 400 that says so,
never silently ignored or resolved one way or the other.
"""

from __future__ import annotations

from collections.abc import Collection

import falcon.asgi

from wadm.api.params import show
from wadm.errors import QueryError

__all__ = ["Query"]


class Query:
    """Validated access to a request's query parameters.

    Args:
        req: the request.
        allowed: the parameter names the endpoint takes.

    Raises:
        QueryError: an unknown parameter, or one given more than once.
    """

    __slots__ = ("_params",)

    def __init__(self, req: falcon.asgi.Request, allowed: Collection[str]) -> None:
        params = req.params
        for name, value in params.items():
            if name not in allowed:
                takes = ", ".join(sorted(allowed)) or "no parameters"
                plain = len(name) <= 40 and name.isascii() and name.isprintable()
                raise QueryError(name if plain else None,
                                 f"unknown parameter {show(name)}; this endpoint takes {takes}")
            if isinstance(value, list):
                raise QueryError(name, f"{name} is given {len(value)} times; give it once")
        self._params: dict[str, str] = params  # type: ignore[assignment]  # lists were refused above

    def get(self, name: str) -> str | None:
        """The value as given (``''`` when given empty), or None when absent."""
        return self._params.get(name)
