"""What ``gpt4all-serve`` reports about itself: the per-model state behind ``/health`` and the Prometheus
metrics behind ``/metrics``.

Counters and histograms of requests and tokens are updated as each request ends.  The per-model gauges
(queue depth, busy slots, loaded) and the model lifecycle counters are read from the server's pool when
Prometheus scrapes, so they cannot drift from what the pool does.  Each server has its own registry (two
apps in one process do not mix) and exposes no ``_created`` series.

prometheus-client comes with the ``serve`` extra and is imported only when a server builds its metrics.
"""
from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

if TYPE_CHECKING:  # pragma: no cover
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from ..sampling import GenerationStats

#: seconds: time to first token and request duration on CPUs, from a cached prompt to a long answer
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
#: completion tokens per second of one generation
SPEED_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)


@dataclass(frozen=True)
class ModelState:
    """One served model as ``/health`` and ``/metrics`` report it, read from the pool when they ask."""

    id: str
    #: "queue": one request runs at a time and the others wait in order; "batch": several decode together
    mode: str
    #: requests the model can run at once, and how many run now
    slots: int
    busy_slots: int
    #: requests waiting for a slot
    waiting: int
    #: whether a worker holds it in memory now
    loaded: bool


class PoolEvent(enum.Enum):
    """What happens to a model's workers, counted by model id (the value is the metric's name)."""

    LOAD = "model_loads"
    UNLOAD = "model_unloads"
    LOAD_FAILURE = "model_load_failures"
    WORKER_CRASH = "worker_crashes"


#: help text of each lifecycle counter
EVENT_HELP = {
    PoolEvent.LOAD: "Workers that loaded the model.",
    PoolEvent.UNLOAD: "Workers unloaded to make room for another model (least recently used first).",
    PoolEvent.LOAD_FAILURE: "Loads of the model that failed (the request that asked got a 500).",
    PoolEvent.WORKER_CRASH: "Workers that died or were killed (signal, abort, time-out); the model loads again "
                            "on the next request.",
}

#: the pool's tally of events: {(event, model id): count}
EventCounts = Counter[tuple[PoolEvent, str]]


class ServerMetrics:
    """The registry ``/metrics`` exposes, and what the request handlers record into it."""

    def __init__(self, states: Callable[[], Iterable[ModelState]], events: EventCounts) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.states, self.events = states, events
        instruments = CollectorRegistry(auto_describe=True)
        model = ["model"]
        self.requests = Counter("gpt4all_requests", "HTTP requests answered, by route, model and status.",
                                ["route", "model", "status"], registry=instruments)
        self.prompt_tokens = Counter("gpt4all_prompt_tokens", "Prompt tokens of finished generations.", model,
                                     registry=instruments)
        self.prompt_tokens_cached = Counter(
            "gpt4all_prompt_tokens_cached", "Prompt tokens not evaluated again: the model's cache held that prefix.",
            model, registry=instruments)
        self.completion_tokens = Counter("gpt4all_completion_tokens", "Tokens generated.", model,
                                         registry=instruments)
        self.time_to_first_token = Histogram(
            "gpt4all_time_to_first_token_seconds",
            "Seconds from a generation request's arrival to its first token (queueing and loading included).",
            model, buckets=LATENCY_BUCKETS, registry=instruments)
        self.request_duration = Histogram(
            "gpt4all_request_duration_seconds", "Seconds from a request's arrival to the end of its answer "
            "(a stream's last event).", ["route", "model"], buckets=LATENCY_BUCKETS, registry=instruments)
        self.tokens_per_second = Histogram(
            "gpt4all_generation_tokens_per_second", "Completion tokens per second of one generation, after "
            "its first token.", model, buckets=SPEED_BUCKETS, registry=instruments)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_WithoutCreated(instruments))
        self.registry.register(_PoolCollector(self))

    def request(self, route: str, model: str, status: int, seconds: float) -> None:
        self.requests.labels(route, model, str(status)).inc()
        self.request_duration.labels(route, model).observe(seconds)

    def generation(self, model: str, stats: GenerationStats | None, first_token_s: float | None) -> None:
        """A generation that ended: its usage (None when the model reported none) and time to first token."""
        if first_token_s is not None:
            self.time_to_first_token.labels(model).observe(first_token_s)
        if stats is None:
            return
        self.prompt_tokens.labels(model).inc(stats.prompt_tokens)
        self.prompt_tokens_cached.labels(model).inc(max(0, stats.prompt_tokens - stats.prompt_evaluated))
        self.completion_tokens.labels(model).inc(stats.completion_tokens)
        if stats.tokens_per_second is not None:
            self.tokens_per_second.labels(model).observe(stats.tokens_per_second)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """(body, content type) of a scrape, in the format the scraper's Accept header asks for."""
        from prometheus_client.exposition import choose_encoder

        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class _WithoutCreated:
    """The instruments of a registry without their ``_created`` samples (a process-wide switch in
    prometheus-client turns them off; this leaves the rest of the process alone)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.inner = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self.inner.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


class _PoolCollector:
    """The per-model gauges and lifecycle counters, read from the pool at scrape time."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        states = list(self.metrics.states())
        gauges: dict[str, tuple[str, Callable[[ModelState], int]]] = {
            "queue_depth": ("Requests waiting for a slot of the model.", lambda s: s.waiting),
            "active_slots": ("Slots of the model running a request now.", lambda s: s.busy_slots),
            "slots": ("Requests the model can run at once.", lambda s: s.slots),
            "model_loaded": ("1 while a worker holds the model in memory, else 0.", lambda s: int(s.loaded)),
        }
        for name, (doc, value) in gauges.items():
            g = GaugeMetricFamily("gpt4all_" + name, doc, labels=["model"])
            for s in states:
                g.add_metric([s.id], value(s))
            yield g
        info = InfoMetricFamily("gpt4all_model", "How the model serves its requests: mode 'queue' (one at a time, "
                                "in order) or 'batch' (several decode together).", labels=["model"])
        for s in states:
            info.add_metric([s.id], {"mode": s.mode})
        yield info
        for event, doc in EVENT_HELP.items():
            c = CounterMetricFamily("gpt4all_" + event.value, doc, labels=["model"])
            for s in states:
                c.add_metric([s.id], self.metrics.events[event, s.id])
            yield c
