"""Prometheus metrics of one worker (``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter("slotbandit_decisions", "Decisions served", ["slot"], registry=self.registry)
        self.fallbacks = Counter(
            "slotbandit_fallbacks", "Decisions that served the default block because something failed",
            ["slot", "reason"], registry=self.registry,
        )
        self.rewards = Counter("slotbandit_rewards", "Rewards stored", registry=self.registry)
        self.activations = Counter("slotbandit_activations", "Activations stored", registry=self.registry)
        self.rejected = Counter("slotbandit_rejected_requests", "Requests rejected with a 4xx", ["code"], registry=self.registry)
        self.decide_latency = Histogram(
            "slotbandit_decide_seconds", "Decide latency inside the handler, including the log commit",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0), registry=self.registry,
        )
        self.log_batch = Histogram(
            "slotbandit_log_batch_size", "Decisions per group commit",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500), registry=self.registry,
        )
        self.model_version = Gauge("slotbandit_model_version", "Serving model version", ["policy"], registry=self.registry)
