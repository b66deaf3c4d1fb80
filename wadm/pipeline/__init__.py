"""Collection as it runs: collectors, the writer, listings, resume, supervision and the live view.

Nothing here is imported by the API: it reads :class:`wadm.live.LiveView`, which
:class:`~wadm.pipeline.service.Service` provides as ``service.live``.
"""

from wadm.pipeline.collector import Collector, CollectorSettings
from wadm.pipeline.service import Service, build_plans
from wadm.pipeline.writer import Writer, WriterStats

__all__ = ["Collector", "CollectorSettings", "Service", "Writer", "WriterStats", "build_plans"]
