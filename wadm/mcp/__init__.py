"""``wadm mcp``: read-only MCP tools over a WADM REST API, for an LLM on the user's computer.

It needs only the ``mcp`` SDK and httpx (no collector, store or analytics code), so it also ships
as the small ``wadm-mcp`` distribution (``deploy/mcp``). Importing this package starts nothing.
"""

__all__: list[str] = []
