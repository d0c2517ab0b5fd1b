"""Prometheus metrics of the server (GET /metrics).

Each app has its own registry (several apps may live in one test process). With several worker
processes, `fusioncast-serve --workers N` sets PROMETHEUS_MULTIPROC_DIR and every worker's values
are summed at scrape time, whichever worker answers it.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("fusioncast_requests", "Forecast requests answered, by HTTP status", ["status"],
                                registry=r)
        self.latency = Histogram("fusioncast_request_seconds", "Forecast request latency in the server (s)",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.forecasts = Counter("fusioncast_forecasts", "Series forecast", registry=r)
        self.batch_series = Histogram("fusioncast_batch_series", "Series per model call", buckets=BATCH_BUCKETS,
                                      registry=r)
        self.model_seconds = Histogram("fusioncast_model_seconds", "Duration of one model call (s)",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queued = Gauge("fusioncast_queued_series", "Series waiting for the model", registry=r,
                            multiprocess_mode="livesum")

    def batch(self, n: int, seconds: float) -> None:
        self.batch_series.observe(n)
        self.model_seconds.observe(seconds)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
