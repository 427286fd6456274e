"""Prometheus metrics of one server (own registry, so several apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """Requests, latency, batch sizes, tokens and the current load of one server."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "clara_requests", "HTTP requests answered", ["endpoint", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "clara_request_duration_seconds",
            "Time to answer a request",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "clara_batch_size", "Questions answered by one generator call", buckets=BATCH_BUCKETS, registry=r
        )
        self.generate_seconds = Histogram(
            "clara_generate_duration_seconds", "Time of one generator call", buckets=LATENCY_BUCKETS, registry=r
        )
        self.prompt_tokens = Counter("clara_prompt_tokens", "Prompt tokens read (question + memory slots)", registry=r)
        self.completion_tokens = Counter("clara_completion_tokens", "Tokens generated", registry=r)
        self.in_flight = Gauge("clara_requests_in_flight", "Requests holding a slot (queued or running)", registry=r)
        self.queued = Gauge("clara_generation_queue", "Chat requests waiting for the generator", registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
