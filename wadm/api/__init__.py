"""The read-only REST API (Falcon ASGI)."""

from wadm.api.app import create_app

__all__ = ["create_app"]
