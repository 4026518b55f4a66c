"""Prometheus metrics, named the Prometheus way, served on the operator's metrics port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

PREFIX = "modelpromotion"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.promotions = Counter(f"{PREFIX}_outcomes_total", "Promotions decided, by outcome.",
                                  ["outcome"], registry=r)
        self.reconcile_seconds = Histogram(f"{PREFIX}_reconcile_duration_seconds",
                                           "Time one reconcile took.", registry=r,
                                           buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        self.copy_seconds = Histogram(f"{PREFIX}_copy_duration_seconds",
                                      "Time a model copy took, verification included.", ["mode"],
                                      registry=r, buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 1800))
        self.copied_bytes = Counter(f"{PREFIX}_copied_bytes_total", "Model bytes copied.", ["mode"],
                                    registry=r)
        self.upstream_errors = Counter(f"{PREFIX}_upstream_errors_total",
                                       "Failed calls to MLflow, S3 or the API server.", ["upstream"],
                                       registry=r)
        self.rollout_seconds = Histogram(f"{PREFIX}_rollout_duration_seconds",
                                         "From the SeldonDeployment write to the verdict (verified or failed).",
                                         ["result"], registry=r,
                                         buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800))
        self.rollbacks = Counter(f"{PREFIX}_rollbacks_total", "Failed rollouts rolled back, by reason.",
                                 ["reason"], registry=r)
        self.smoke_test_seconds = Histogram(f"{PREFIX}_smoke_test_duration_seconds",
                                            "Time the model took to answer its own example.", registry=r,
                                            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

    def outcome(self, phase: str) -> None:
        self.promotions.labels(outcome=phase).inc()

    def upstream_error(self, upstream: str) -> None:
        self.upstream_errors.labels(upstream=upstream).inc()

    def copied(self, mode: str, size: int, seconds: float) -> None:
        if mode == "reused":
            return
        self.copied_bytes.labels(mode=mode).inc(size)
        self.copy_seconds.labels(mode=mode).observe(seconds)

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, registry=self.registry)
