"""Pure polars analytics: DataFrames in, DataFrames or typed results out; no I/O, no clock.

Conventions C1-C17 of the indicator reference apply: prices are binned on integer ticks (rows
labelled by their lower edge), quantities are summed exactly where a float sum could give
another answer, the aggressor side comes from the venue's flag, and CVD resets at 00:00 UTC.
"""

__all__: list[str] = []
