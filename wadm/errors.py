"""The one error tree of WADM.

::

    WadmError
    ├── UsageError            our side: bad configuration, bad query, misuse of an API
    │   ├── ConfigError       a setting that cannot be used (names the variable or key)
    │   └── QueryError        a REST query parameter that cannot be used
    ├── VenueProtocolError    the venue sent something we cannot use (malformed, unknown)
    └── StoreError            the store failed; the caller keeps the batch and retries

Foreign exceptions are wrapped at the boundary with ``raise X(...) from exc``.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "QueryError",
    "StoreError",
    "UsageError",
    "VenueProtocolError",
    "WadmError",
]


class WadmError(Exception):
    """Base of every error WADM raises on purpose."""


class UsageError(WadmError):
    """Something on our side was used wrongly: configuration, queries, arguments."""


class ConfigError(UsageError):
    """A configuration value cannot be used.

    Args:
        name: the environment variable or YAML key.
        value: the offending value as given.
        allowed: what would have been accepted.
    """

    def __init__(self, name: str, value: object, allowed: str) -> None:
        self.name = name
        self.value = value
        self.allowed = allowed
        super().__init__(f"{name}={value!r} is invalid: {allowed}")


class QueryError(UsageError):
    """A REST query parameter cannot be used.

    Args:
        parameter: the parameter name.
        message: a sentence naming what was wrong and what is allowed.
        status: the HTTP status to answer with.
        code: the machine-readable error code.
        headers: extra response headers (e.g. ``Retry-After``).
    """

    def __init__(
        self,
        parameter: str | None,
        message: str,
        *,
        status: int = 400,
        code: str = "invalid_parameter",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.parameter = parameter
        self.status = status
        self.code = code
        self.headers = headers or {}
        super().__init__(message)


class VenueProtocolError(WadmError):
    """A venue frame could not be used.

    Args:
        kind: a low-cardinality label (``invalid_json``, ``unknown_event``, ``zero_price``...).
        detail: a short description for logs.
    """

    def __init__(self, kind: str, detail: str = "") -> None:
        self.kind = kind
        super().__init__(f"{kind}: {detail}" if detail else kind)


class StoreError(WadmError):
    """The store could not complete an operation."""
