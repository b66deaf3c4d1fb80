"""Buffers to batches to the store; the service that wires collectors, writer and retention."""

from wadm.pipeline.service import Service, build_plans
from wadm.pipeline.writer import Writer, WriterStats

__all__ = ["Service", "Writer", "WriterStats", "build_plans"]
