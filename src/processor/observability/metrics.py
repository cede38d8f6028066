"""Every Prometheus metric of docs/metrics.md, in one registry per running service.

One `Metrics` object per app (not module globals) so that each test, and each instance in one
process, counts only its own work. Counters are incremented per record by the code that knows the
record's outcome; nothing here is derived or estimated.
"""

from __future__ import annotations

import bisect
import platform
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from processor.version import VERSION

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
WRITE_STATUSES = ("inserted", "merged", "duplicate", "failed")
LIVE_STAGES = ("request", "admission", "reject", "accept", "serve", "close", "history")
# The label values of every labelled counter, exported at 0 from the start: `increase()` and
# `rate()` see a series' first increment only when the series existed before it (a dead letter right
# after a restart would otherwise raise no alert).
# tests/integration/observability/test_observability_metrics.py checks each list against the code
# that produces the values.
DEAD_LETTER_REASONS = ("decode_error", "db_rejected", "max_deliveries", "trimmed")
DECODE_ERROR_KINDS = (
    "missing_payload",
    "invalid_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "out_of_range",
    "bad_text",
    "bad_timestamp",
    "bad_sentinel",
)
FAULT_REASONS = ("zero_satellites", "null_island", "future_timestamp", "implausible_speed")
LIVE_AUTH_RESULTS = (
    "ok",
    "unauthorized",
    "unavailable",
    "missing",
    "origin_refused",
    "too_many_connections",
)
LIVE_MESSAGES_IN = ("subscribe", "unsubscribe", "too_big", "invalid")
LIVE_MESSAGES_OUT = (
    "subscribed",
    "unsubscribed",
    "position",
    "error",
    "timing",
    "results",
    "alert",
    "violation",
)
ALERT_KINDS = ("stopped", "no_signal")
LIVE_HISTORY_RESULTS = (
    "ok",
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "too_many_fixes",
    "too_many_requests",
    "internal",
    "unavailable",
)
STALL_CHECKS = ("postgres_writes", "dead_letter_stream")


class Metrics:
    """The processor's metrics (prefix `processor_`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        p = "processor_"
        # --- the process: build, CPU, memory, file descriptors, Python ---------------------------
        self.build_info = Gauge(
            p + "build_info",
            "Always 1; the labels say which build runs (version, Python).",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(VERSION, platform.python_version()).set(1)
        ProcessCollector(registry=r)  # process_* (CPU seconds, RSS, open fds, start time)
        PlatformCollector(registry=r)  # python_info
        # --- durable pipeline ----------------------------------------------------------------
        self.consumer_reads = Counter(
            p + "consumer_reads",
            "XREADGROUP calls by result (entries, empty, error).",
            ["result"],
            registry=r,
        )
        self.consumer_records = Counter(
            p + "consumer_records",
            "Stream entries read by the consumer and the reclaimer.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            p + "consumer_lag", "Entries in the stream not yet delivered to the group.", registry=r
        )
        self.consumer_lag_seconds = Gauge(
            p + "consumer_lag_seconds",
            "Age of the oldest entry the group has not acknowledged (pending, else the first "
            "undelivered), from its stream ID's time; 0 when nothing waits.",
            registry=r,
        )
        self.pending_entries = Gauge(
            p + "pending_entries",
            "Entries delivered to the group but not yet acknowledged.",
            registry=r,
        )
        self.decode_errors = Counter(
            p + "decode_errors",
            "Stream entries that could not be decoded, by reason.",
            ["reason"],
            registry=r,
        )
        self.position_writes = Counter(
            p + "position_writes",
            "Records by write outcome (per record, not per batch).",
            ["status"],
            registry=r,
        )
        self.write_duration = Histogram(
            p + "write_duration_seconds",
            "Time to store one batch, first attempt to commit (retries and splits included); for a "
            "batch copied ahead, its copy plus its merge, not its wait for the batch before it.",
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.write_batch_size = Histogram(
            p + "write_batch_size", "Records per batch write.", buckets=BATCH_BUCKETS, registry=r
        )
        self.acks = Counter(
            p + "acks",
            "Stream entries acknowledged (XACK) after commit or dead-lettering.",
            registry=r,
        )
        self.dead_letters = Counter(
            p + "dead_letters",
            "Entries copied to the dead-letter stream, by reason.",
            ["reason"],
            registry=r,
        )
        self.reclaimed = Counter(
            p + "reclaimed", "Entries claimed from idle consumers (XAUTOCLAIM).", registry=r
        )
        self.consumers_removed = Counter(
            p + "consumers_removed",
            "Dead consumers removed from the groups (nothing pending, idle past "
            "CONSUMER_MAX_IDLE_S).",
            registry=r,
        )
        self.reclaim_trimmed = Counter(
            p + "reclaim_trimmed",
            "Pending entries whose stream data was trimmed before they were stored (lost).",
            registry=r,
        )
        self.faulty_positions = Counter(
            p + "faulty_positions",
            "Positions stored with faulty=true, by reason.",
            ["reason"],
            registry=r,
        )
        self.device_state_size = Gauge(
            p + "device_state_size", "Devices held in the in-memory state.", registry=r
        )
        self.device_state_evictions = Counter(
            p + "device_state_evictions", "Devices evicted from state by the LRU cap.", registry=r
        )
        self.e2e_latency = Histogram(
            p + "e2e_latency_seconds",
            "Commit time minus the stream entry's own time.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.write_retries = Counter(
            p + "write_retries",
            "Batch writes retried after a transient database error.",
            registry=r,
        )
        self.pipeline_stalled = Gauge(
            p + "pipeline_stalled",
            "1 while a failure no probe sees (e.g. a refused INSERT, an unwritable dead-letter "
            "stream) keeps the pipeline from storing or settling; /readyz names it.",
            ["check"],
            registry=r,
        )
        self.ready = Gauge(
            p + "ready",
            "1 when /readyz answers 200: started, not draining, Redis and PostgreSQL answered.",
            registry=r,
        )
        # --- live broadcast ------------------------------------------------------------------
        self.live_connections = Gauge(
            p + "live_connections", "Open live WebSocket connections.", registry=r
        )
        self.live_subscriptions = Gauge(
            p + "live_subscriptions", "Active (connection, topic) subscriptions.", registry=r
        )
        self.live_messages = Counter(
            p + "live_messages",
            "Live WebSocket messages by direction and type.",
            ["direction", "type"],
            registry=r,
        )
        self.live_auth_duration = Histogram(
            p + "live_auth_duration_seconds",
            "Directus authentication round trip at upgrade.",
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.live_auth = Counter(
            p + "live_auth", "Live upgrade authentication outcomes.", ["result"], registry=r
        )
        self.live_broadcast_lag = Histogram(
            p + "live_broadcast_lag_seconds",
            "Send time minus the stream entry's own time.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.live_entries_read = Counter(
            p + "live_entries_read",
            "Stream entries the live broadcaster read (every entry, fit to broadcast or not).",
            registry=r,
        )
        self.live_positions_broadcast = Counter(
            p + "live_positions_broadcast",
            "Positions judged fit and handed to their events' subscribers (late, repeated, "
            "faulty fixes and devices of no event are not).",
            registry=r,
        )
        self.live_slow_consumer_closes = Counter(
            p + "live_slow_consumer_closes",
            "Live clients closed with 4008 (slow consumer).",
            registry=r,
        )
        self.live_snapshot_duration = Histogram(
            p + "live_snapshot_duration_seconds",
            "Snapshot query duration on subscribe.",
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.live_device_event_map_size = Gauge(
            p + "live_device_event_map_size", "Devices in the device -> events map.", registry=r
        )
        self.live_connection_errors = Counter(
            p + "live_connection_errors",
            "Live connections ended by an unexpected failure in their handling, by stage.",
            ["stage"],
            registry=r,
        )
        self.live_pending_upgrades = Gauge(
            p + "live_pending_upgrades",
            "Live sockets still in their HTTP upgrade (capped by LIVE_WS_MAX_PENDING_UPGRADES).",
            registry=r,
        )
        self.live_upgrades_dropped = Counter(
            p + "live_upgrades_dropped",
            "Sockets dropped before the upgrade completed (pending_limit, handshake_timeout).",
            ["reason"],
            registry=r,
        )
        self.live_reauth = Counter(
            p + "live_reauth",
            "Periodic live session re-checks against Directus, by result (ok, expired,"
            " unavailable, error).",
            ["result"],
            registry=r,
        )
        self.live_revocations = Counter(
            p + "live_revocations",
            "Live access ended by a re-check: connections closed (session_expired,"
            " reauth_unavailable) and subscriptions removed (event_forbidden).",
            ["reason"],
            registry=r,
        )
        self.live_history_requests = Counter(
            p + "live_history_requests",
            "Track history requests on the live port, by result (ok, bad_request, unauthorized,"
            " forbidden, not_found, too_many_fixes, too_many_requests, unavailable, internal).",
            ["result"],
            registry=r,
        )
        self.live_history_duration = Histogram(
            p + "live_history_duration_seconds",
            "Time to read, simplify and encode one track history response.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        # --- supervision of the side services ------------------------------------------------
        self.service_restarts = Counter(
            p + "service_restarts",
            "Side services restarted after failing at run time, by service.",
            ["service"],
            registry=r,
        )
        self.service_up = Gauge(
            p + "service_up",
            "1 while a supervised side service runs, 0 while it waits to be restarted.",
            ["service"],
            registry=r,
        )
        # --- racing domain (docs/racing-domain.md) ------------------------------------------------
        self.domain_passes = Counter(
            p + "domain_passes",
            "Timing records written (new or changed) by the domain engine, by control kind.",
            ["kind"],
            registry=r,
        )
        self.domain_evaluation = Histogram(
            p + "domain_evaluation_seconds",
            "Time to evaluate one batch's affected (stage, entry) pairs and commit the results.",
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.alerts_open = Gauge(
            p + "alerts_open",
            "Open safety alerts by kind (all instances report the same table: use max).",
            ["kind"],
            registry=r,
        )
        self.alerts_raised = Counter(
            p + "alerts_raised",
            "Safety alerts this instance raised, by kind.",
            ["kind"],
            registry=r,
        )
        self.speed_violations = Counter(
            p + "speed_violations_written",
            "Speed-zone violations this instance wrote (new or changed).",
            registry=r,
        )
        self.domain_lag = Gauge(
            p + "domain_lag",
            "Entries in the stream not yet delivered to the domain group.",
            registry=r,
        )
        self.domain_fixes = Counter(
            p + "domain_fixes",
            "Fixes the domain engine evaluated (those that belong to a stage of an entry).",
            registry=r,
        )
        self.domain_late_reevaluations = Counter(
            p + "domain_late_reevaluations",
            "(stage, entry) evaluations that recomputed stored passes because a fix came late.",
            registry=r,
        )
        self.domain_skipped_fixes = Counter(
            p + "domain_skipped_fixes",
            "Fixes the domain engine gave up waiting for (never stored), by reason.",
            ["reason"],
            registry=r,
        )
        self.domain_rebuilds = Counter(
            p + "domain_rebuilds",
            "Whole-stage re-evaluations (changed definitions, first sight of a stage).",
            registry=r,
        )
        self.domain_yields = Counter(
            p + "domain_yields",
            "Pauses of the domain engine while the durable pipeline had a backlog.",
            registry=r,
        )
        self.domain_errors = Counter(
            p + "domain_errors",
            "Unexpected failures that ended a life of the domain engine (restarted by its "
            "supervisor; the batch in hand stays pending).",
            registry=r,
        )
        self.domain_stage_errors = Counter(
            p + "domain_stage_errors",
            "Problems that disable one stage or one feature of the racing domain (definition, "
            "schema, data, database), counted when first seen; /readyz lists the current ones.",
            ["reason"],
            registry=r,
        )
        self.domain_problems = Gauge(
            p + "domain_problems",
            "Current problems of the racing domain (stages or features disabled).",
            registry=r,
        )
        self.domain_fixes_loaded = Histogram(
            p + "domain_fixes_loaded",
            "Fixes read from positions by one stage evaluation of a batch.",
            buckets=(0, 10, 100, 1_000, 10_000, 100_000, 1_000_000),
            registry=r,
        )
        self.domain_reclaimed = Counter(
            p + "domain_reclaimed",
            "Entries the domain group claimed from consumers that went away.",
            registry=r,
        )
        self.domain_dead_letters = Counter(
            p + "domain_dead_letters",
            "Entries the domain engine dead-lettered after failing MAX_DELIVERIES times.",
            registry=r,
        )

        for status in WRITE_STATUSES:
            self.position_writes.labels(status)
        for stage in LIVE_STAGES:  # exported at 0 from the start, so rate() alerts work
            self.live_connection_errors.labels(stage)
        for reason in ("pending_limit", "handshake_timeout"):
            self.live_upgrades_dropped.labels(reason)
        for result in ("ok", "expired", "unavailable", "error"):
            self.live_reauth.labels(result)
        for reason in ("session_expired", "reauth_unavailable", "event_forbidden"):
            self.live_revocations.labels(reason)
        for result in ("entries", "empty", "error"):
            self.consumer_reads.labels(result)
        for kind in ("start", "waypoint", "checkpoint", "finish"):
            self.domain_passes.labels(kind)
        for reason in ("dead_lettered", "timeout", "trimmed"):
            self.domain_skipped_fixes.labels(reason)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        for kind in DECODE_ERROR_KINDS:
            self.decode_errors.labels(kind)
        for reason in FAULT_REASONS:
            self.faulty_positions.labels(reason)
        for result in LIVE_AUTH_RESULTS:
            self.live_auth.labels(result)
        for kind in LIVE_MESSAGES_IN:
            self.live_messages.labels("in", kind)
        for kind in LIVE_MESSAGES_OUT:
            self.live_messages.labels("out", kind)
        for kind in ALERT_KINDS:
            self.alerts_raised.labels(kind)
        for result in LIVE_HISTORY_RESULTS:
            self.live_history_requests.labels(result)
        for check in STALL_CHECKS:
            self.pipeline_stalled.labels(check).set(0)


def observe_many(histogram: Histogram, values: Iterable[float]) -> None:
    """`histogram.observe(v)` for every value, with one lock per bucket instead of per value.

    The writer records one end-to-end latency per stored record; observing them one by one
    (a lock and a bucket walk each) showed in profiles of the hot path. This counts the values
    per bucket first and adds the counts, which yields exactly what repeated `observe` would
    (tests compare the two). It relies on prometheus-client's `_upper_bounds`, `_buckets` and
    `_sum` and falls back to `observe` if a release ever renames them.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for value in values:
            histogram.observe(value)
        return
    values = list(values)
    ordered = sorted(values)  # a batch's latencies are nearly sorted already: a linear pass
    if not ordered:
        return
    # A value v falls in the first bucket whose bound b has v <= b: bucket i holds the values
    # in (bounds[i-1], bounds[i]], counted with one bisection per bound, not one per value.
    below = 0
    for index, bound in enumerate(bounds):
        upto = bisect.bisect_right(ordered, bound, lo=below)
        if upto > below:
            buckets[index].inc(upto - below)
            below = upto
        if below == len(ordered):
            break
    total.inc(sum(values))  # in the given order: the very float repeated `observe` adds up
