"""Prometheus metrics (``/metrics``).

One worker keeps them in memory. ``slotbandit serve --workers N`` sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start: each then writes its
values to files there and ``/metrics``, whichever worker answers, reports the
sum over all of them (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["Metrics"]


class Metrics:
    """The service's metrics. ``multiprocess``: prometheus_client's multiprocess mode is on
    (``ServiceSettings.metrics_dir``): the exposition sums over every worker's files."""

    def __init__(self, *, multiprocess: bool = False) -> None:
        self.multiprocess = multiprocess
        self.registry = CollectorRegistry()
        self.decisions = Counter("slotbandit_decisions", "Decisions served", ["slot"], registry=self.registry)
        self.fallbacks = Counter(
            "slotbandit_fallbacks", "Decisions that served the default block because something failed",
            ["slot", "reason"], registry=self.registry,
        )
        self.rewards = Counter("slotbandit_rewards", "Rewards stored", registry=self.registry)
        self.activations = Counter("slotbandit_activations", "Activations stored", registry=self.registry)
        self.rejected = Counter("slotbandit_rejected_requests", "Requests rejected with a 4xx", ["code"], registry=self.registry)
        self.unavailable = Counter(
            "slotbandit_unavailable_requests", "Requests answered 503 because the database could not be reached",
            ["code"], registry=self.registry,
        )
        self.decide_latency = Histogram(
            "slotbandit_decide_seconds", "Decide latency inside the handler, including the log commit",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0), registry=self.registry,
        )
        self.log_batch = Histogram(
            "slotbandit_log_batch_size", "Decisions per group commit",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500), registry=self.registry,
        )
        self.log_commit_seconds = Histogram(
            "slotbandit_log_commit_seconds",
            "Duration of a group commit of the log, by path: on the event loop or in the writer thread",
            ["path"], buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0), registry=self.registry,
        )
        self.model_version = Gauge("slotbandit_model_version", "Serving model version", ["policy"], registry=self.registry,
                                   multiprocess_mode="max")

    def exposition(self) -> bytes:
        """The text format of every metric, summed over the workers in multiprocess mode."""
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
