"""The only modules that own sockets: WebSocket links and (later) the REST client."""

from wadm.transport.rest import RestClient, RestError, WeightBudget
from wadm.transport.ws import Backoff, LinkState, WsLink

__all__ = ["Backoff", "LinkState", "RestClient", "RestError", "WeightBudget", "WsLink"]
