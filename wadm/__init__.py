"""WADM: a 24/7 market-data collector for Binance and Bybit with a read-only REST API.

Importing this package starts nothing.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
