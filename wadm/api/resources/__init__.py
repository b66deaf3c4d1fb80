"""REST resources, one module per family; thin over the store and live state."""

__all__: list[str] = []
