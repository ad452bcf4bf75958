"""Prometheus metrics of one server (`GET /metrics`), in a registry of its own so that several servers
in one process (tests) do not collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.queue_depth = Gauge("jaxlm_queue_depth", "requests waiting for a free row", registry=self.registry)
        self.running = Gauge("jaxlm_running_requests", "requests decoding now", registry=self.registry)
        self.tokens_per_second = Gauge("jaxlm_decode_tokens_per_second",
                                       "tokens generated per second by the last decode call, all rows together",
                                       registry=self.registry)
        self.generated_tokens = Counter("jaxlm_generated_tokens", "tokens generated", registry=self.registry)
        self.finished = Counter("jaxlm_finished_requests", "requests (choices) ended, by reason", ["reason"],
                                registry=self.registry)
        self.time_to_first_token = Histogram(
            "jaxlm_time_to_first_token_seconds", "from arrival to the first token, queueing included",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=self.registry)
