"""The read-only REST API (Falcon ASGI): resources over the store and a :class:`wadm.live.LiveView`.

Nothing here reaches a collector or a socket to a venue: ``create_app(settings, store, live)``
is the only way the API gets what it needs.
"""

from wadm.api.app import create_app, served

__all__ = ["create_app", "served"]
