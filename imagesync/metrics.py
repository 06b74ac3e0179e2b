"""Prometheus metrics of ``imagesync serve`` (``GET /metrics``), via prometheus_client.

Every :class:`Metrics` has its own ``CollectorRegistry``: nothing is registered in
prometheus_client's global registry, so several servers (tests) live in one process.

=====================================================  ===========================================
``imagesync_images_total{rule,status,trigger}``        destination images by outcome (synced,
                                                       skipped, failed, conflict, interrupted);
                                                       trigger ``event`` or ``sync``
``imagesync_bytes_total``                              bytes that reached a destination
``imagesync_events_total{sender,outcome}``             deliveries: accepted, ignored, queue_full,
                                                       unauthorized, invalid, stopping
``imagesync_events_coalesced_total``                   pushes folded into a newer one
``imagesync_queue_depth``                              accepted pushes not mirrored yet
``imagesync_copies_in_flight``                         event-driven copies running now
``imagesync_event_to_mirror_seconds``                  histogram: event received -> copy done
``imagesync_full_syncs_total{trigger,outcome}``        full syncs (start-up / interval): ok,
                                                       failed (some image failed), error
``imagesync_last_full_sync_timestamp_seconds``         end of the last full sync
``imagesync_config_reloads_total{outcome}``            SIGHUP reloads: ok, failed
``imagesync_retries_total``                            requests tried again (every registry)
``imagesync_registry_throttled_total{registry}``       429/503 Retry-After holds per registry
``imagesync_registry_unreachable_total{registry}``     connection-failure retry cycles per registry
=====================================================  ===========================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .events import Observer

if TYPE_CHECKING:
    from .manifest import Descriptor
    from .plan import PlanError, PlanItem
    from .report import Result

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


@dataclass
class ClientStats:
    """What the HTTP client counted, read at scrape time."""

    retries: int = 0
    throttled: dict[str, int] = field(default_factory=dict)    # registry -> holds
    unreachable: dict[str, int] = field(default_factory=dict)  # registry -> failure cycles


class _ClientCollector:
    def __init__(self, stats: Callable[[], ClientStats]):
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield CounterMetricFamily("imagesync_retries",
                                  "Requests tried again after a transient failure "
                                  "(all registries)", value=s.retries)
        throttled = CounterMetricFamily("imagesync_registry_throttled",
                                        "Times a registry asked to back off (429/503 "
                                        "Retry-After)", labels=["registry"])
        for reg, n in sorted(s.throttled.items()):
            throttled.add_metric([reg], n)
        yield throttled
        down = CounterMetricFamily("imagesync_registry_unreachable",
                                   "Connection-failure retry cycles per registry",
                                   labels=["registry"])
        for reg, n in sorted(s.unreachable.items()):
            down.add_metric([reg], n)
        yield down


class Metrics:
    def __init__(self, stats: Callable[[], ClientStats] | None = None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.images = Counter("imagesync_images", "Destination images by outcome",
                              ["rule", "status", "trigger"], registry=r)
        self.bytes = Counter("imagesync_bytes", "Bytes that reached a destination",
                             registry=r)
        self.events = Counter("imagesync_events", "Webhook deliveries by outcome",
                              ["sender", "outcome"], registry=r)
        self.coalesced = Counter("imagesync_events_coalesced",
                                 "Pushes folded into a newer push to the same destination",
                                 registry=r)
        self.queue_depth = Gauge("imagesync_queue_depth",
                                 "Accepted pushes not mirrored yet", registry=r)
        self.in_flight = Gauge("imagesync_copies_in_flight",
                               "Event-driven copies running now", registry=r)
        self.latency = Histogram("imagesync_event_to_mirror_seconds",
                                 "From a push event's arrival to its copy's end",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.full_syncs = Counter("imagesync_full_syncs", "Full syncs by outcome",
                                  ["trigger", "outcome"], registry=r)
        self.last_full_sync = Gauge("imagesync_last_full_sync_timestamp_seconds",
                                    "When the last full sync ended (Unix time)", registry=r)
        self.reloads = Counter("imagesync_config_reloads", "SIGHUP config reloads",
                               ["outcome"], registry=r)
        if stats is not None:
            r.register(_ClientCollector(stats))  # type: ignore[arg-type]

    def observer(self, trigger: str) -> Observer:
        """An observer for one run (``trigger``: ``event`` or ``sync``)."""
        return _RunObserver(self, trigger)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _RunObserver(Observer):
    def __init__(self, metrics: Metrics, trigger: str):
        self.metrics = metrics
        self.trigger = trigger
        self._rules: dict[tuple[str, str], str] = {}

    def image_started(self, item: PlanItem) -> None:
        for d in item.destinations:
            self._rules[(item.source, d)] = item.rule

    def image_finished(self, result: Result) -> None:
        rule = self._rules.pop((result.source, result.destination), "")
        self.metrics.images.labels(rule, result.status, self.trigger).inc()

    def plan_error(self, error: PlanError) -> None:
        self.metrics.images.labels(error.rule, "failed", self.trigger).inc()

    def bytes_moved(self, destination: str, blob: Descriptor, n: int) -> None:
        self.metrics.bytes.inc(n)
