"""WADM benchmarks (pytest-benchmark); see README.md."""
