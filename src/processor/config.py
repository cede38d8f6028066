"""Typed, frozen configuration read from the environment (docs/pipeline.md, Configuration).

Every setting is one attrs field whose metadata names its environment variable, what values are
allowed and what it does (`doc`): docs/configuration.md is generated from them (`just docs`).
cattrs turns each raw string into the field's type; attrs validators check the bounds.
Any failure becomes one `ConfigError` line naming the variable, the value and what is allowed, so an
operator who mistyped a setting sees exactly that and not a traceback.
"""

from __future__ import annotations

import functools
import math
import os
import socket
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import attrs
import cattrs

from processor.codecs.quality import QualityRules
from processor.redaction import redact

ENV = "env"
ALLOWED = "allowed"
DOC = "doc"  # what the setting does, one line: docs/configuration.md is generated from it


class ConfigError(ValueError):
    """An invalid setting: the message is the single line shown to the operator."""


def _between(low: float, high: float) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not low <= value <= high:
            raise ValueError(attribute.name)

    return check


def _one_of(*choices: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            raise ValueError(attribute.name)

    return check


def _url(*schemes: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value == "":
            return
        parts = urlsplit(value)
        if parts.scheme not in schemes or not (parts.hostname or parts.path):
            raise ValueError(attribute.name)
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError as exc:
            raise ValueError(attribute.name) from exc

    return check


def _setting(
    env: str,
    default: Any,
    allowed: str,
    validator: Callable[[Any, attrs.Attribute[Any], Any], None] | None = None,
    *,
    doc: str,
) -> Any:
    return attrs.field(
        default=default, validator=validator, metadata={ENV: env, ALLOWED: allowed, DOC: doc}
    )


def _int(env: str, default: int, low: int, high: int, *, doc: str) -> Any:
    return _setting(env, default, f"an integer from {low} to {high}", _between(low, high), doc=doc)


def _float(env: str, default: float, low: float, high: float, *, doc: str) -> Any:
    return _setting(
        env, default, f"a number from {low:g} to {high:g}", _between(low, high), doc=doc
    )


def _text(env: str, default: str, allowed: str = "a non-empty string", *, doc: str) -> Any:
    def non_empty(_i: Any, attribute: attrs.Attribute[Any], value: str) -> None:
        if not value.strip():
            raise ValueError(attribute.name)

    return _setting(env, default, allowed, non_empty, doc=doc)


@attrs.frozen(kw_only=True)
class Config:
    """All settings of one processor instance. Defaults suit a single instance on one host."""

    # --- connections -------------------------------------------------------------------------
    redis_url: str = _setting(
        "REDIS_URL",
        "redis://localhost:6379/0",
        "a redis:// or rediss:// URL",
        _url("redis", "rediss", "unix"),
        doc="Redis holding the input stream, the consumer groups and the dead letters",
    )
    database_url: str = _setting(
        "DATABASE_URL",
        "postgresql://localhost/processor",
        "a postgresql:// URL",
        _url("postgresql", "postgres"),
        doc="PostgreSQL (TimescaleDB where installed) the fixes are stored in",
    )
    instance_id: str = _setting(
        "INSTANCE_ID",
        "",
        "a name unique per instance (default: hostname)",
        doc=(
            "this instance's name, unique and stable: the consumer name and the live group's suffix"
        ),
    )
    startup_timeout_s: float = _float(
        "STARTUP_TIMEOUT_S",
        60.0,
        1,
        3600,
        doc="how long start-up retries Redis and PostgreSQL before it gives up (exit 1)",
    )
    db_statement_timeout_ms: int = _int(
        "DB_STATEMENT_TIMEOUT_MS", 15_000, 100, 600_000, doc="server-side bound on every statement"
    )
    db_pool_size: int = _int(
        "DB_POOL_SIZE",
        4,
        2,
        64,
        doc=(
            "the writer's PostgreSQL connections; at least 2 x `WRITE_CONCURRENCY` + 2 are "
            "used (each lane copies one batch while the one before it merges)"
        ),
    )

    # --- input stream ------------------------------------------------------------------------
    redis_stream: str = _text("REDIS_STREAM", "telemetry:teltonika", doc="the input stream key")
    redis_group: str = _text(
        "REDIS_GROUP", "processor", doc="the durable consumer group all instances share"
    )
    redis_consumer: str = _setting(
        "REDIS_CONSUMER",
        "",
        "a consumer name (default: INSTANCE_ID)",
        doc="this instance's consumer name in the group",
    )
    read_count: int = _int("READ_COUNT", 2000, 1, 100_000, doc="entries per `XREADGROUP`")
    read_block_ms: int = _int(
        "READ_BLOCK_MS",
        1000,
        1,
        60_000,
        doc="`BLOCK` of a read; the socket timeout is set above it",
    )

    # --- writer ------------------------------------------------------------------------------
    write_batch_size: int = _int(
        "WRITE_BATCH_SIZE", 2000, 1, 100_000, doc="records per batch write"
    )
    write_flush_ms: int = _int(
        "WRITE_FLUSH_MS",
        50,
        1,
        60_000,
        doc="flush a partial batch this long after its first record",
    )
    write_concurrency: int = _int(
        "WRITE_CONCURRENCY",
        1,
        1,
        32,
        doc="writer lanes (merging concurrently, split by device; two connections each)",
    )
    pipeline_buffer_batches: int = _int(
        "PIPELINE_BUFFER_BATCHES", 4, 1, 1000, doc="reads buffered between consumer and writer"
    )
    write_retry_initial_ms: int = _int(
        "WRITE_RETRY_INITIAL_MS", 100, 1, 60_000, doc="first backoff after a transient failure"
    )
    write_retry_max_ms: int = _int("WRITE_RETRY_MAX_MS", 5_000, 1, 600_000, doc="backoff cap")
    shutdown_timeout_s: float = _float(
        "SHUTDOWN_TIMEOUT_S",
        15.0,
        0.1,
        3600,
        doc="drain deadline on SIGTERM; the engine's stop timeout must be 5 s longer",
    )

    # --- reclaim and dead letters ------------------------------------------------------------
    reclaim_interval_s: float = _float(
        "RECLAIM_INTERVAL_S",
        15.0,
        0.05,
        86_400,
        doc="how often idle entries of dead consumers are claimed",
    )
    # an entry idle this long is taken from its consumer; held entries are renewed every third
    # of it: far below a second that is a storm of renewals and of needless claims
    reclaim_min_idle_ms: int = _int(
        "RECLAIM_MIN_IDLE_MS", 60_000, 100, 86_400_000, doc="idle time before an entry is claimed"
    )
    max_deliveries: int = _int(
        "MAX_DELIVERIES",
        5,
        1,
        1000,
        doc="deliveries before an entry is dead-lettered as `max_deliveries`",
    )
    consumer_max_idle_s: float = _float(
        "CONSUMER_MAX_IDLE_S",
        3600.0,
        0,
        86_400 * 365,
        doc=(
            "a consumer of the groups that holds no entry and was idle this long is removed "
            "(gone instances); 0 = never (OPERATIONS.md section 3)"
        ),
    )
    consumer_cleanup_interval_s: float = _float(
        "CONSUMER_CLEANUP_INTERVAL_S",
        300.0,
        0.05,
        86_400,
        doc="how often each instance looks for dead consumers to remove",
    )
    dlq_stream: str = _setting(
        "DLQ_STREAM", "", "a stream key (default <REDIS_STREAM>:dead)", doc="the dead-letter stream"
    )
    dlq_maxlen: int = _int(
        "DLQ_MAXLEN", 100_000, 1, 100_000_000, doc="approximate cap of the dead-letter stream"
    )

    # --- fix quality and device state --------------------------------------------------------
    future_tolerance_s: float = _float(
        "FUTURE_TOLERANCE_S",
        300.0,
        0,
        86_400 * 365,
        doc="a fix further ahead of our clock is stored as faulty",
    )
    max_plausible_speed_kmh: float = _float(
        "MAX_PLAUSIBLE_SPEED_KMH",
        400.0,
        1,
        100_000,
        doc="an implied speed above this from the device's last good fix is faulty",
    )
    device_state_cap: int = _int(
        "DEVICE_STATE_CAP", 100_000, 1, 10_000_000, doc="devices kept in memory (LRU)"
    )

    # --- storage policy (TimescaleDB only) ---------------------------------------------------
    positions_chunk_interval: str = _text(
        "POSITIONS_CHUNK_INTERVAL", "1 day", doc="TimescaleDB chunk interval (TimescaleDB only)"
    )
    positions_compress_after_days: int = _int(
        "POSITIONS_COMPRESS_AFTER_DAYS",
        0,
        0,
        36_500,
        doc="compress chunks older than this; 0 = off (TimescaleDB only)",
    )
    positions_retention_days: int = _int(
        "POSITIONS_RETENTION_DAYS",
        0,
        0,
        36_500,
        doc="drop chunks older than this; 0 = off (TimescaleDB only)",
    )

    # --- observability -----------------------------------------------------------------------
    http_host: str = _text("HTTP_HOST", "0.0.0.0", doc="metrics/health listen address")  # noqa: S104 - a container serves all
    http_port: int = _int(
        "HTTP_PORT", 9090, 0, 65_535, doc="metrics/health port (0 = any free port)"
    )
    probe_interval_s: float = _float(
        "PROBE_INTERVAL_S", 2.0, 0.05, 3600, doc="readiness probe period"
    )
    probe_timeout_s: float = _float("PROBE_TIMEOUT_S", 1.0, 0.05, 60, doc="readiness probe timeout")
    lag_sample_interval_s: float = _float(
        "LAG_SAMPLE_INTERVAL_S", 5.0, 0.05, 3600, doc="consumer lag / pending sampling period"
    )
    log_level: str = _setting(
        "LOG_LEVEL",
        "info",
        "one of debug, info, warning, error",
        _one_of("debug", "info", "warning", "error"),
        doc="lifecycle at info, per batch at debug",
    )
    log_format: str = _setting(
        "LOG_FORMAT",
        "json",
        "one of json, console",
        _one_of("json", "console"),
        doc="one JSON object per line, or readable console lines for development",
    )

    # --- live broadcast ----------------------------------------------------------------------
    directus_url: str = _setting(
        "DIRECTUS_URL",
        "",
        "an http:// or https:// URL (empty: live broadcast off)",
        _url("http", "https"),
        doc="Directus base URL for live authentication; empty turns live broadcast off",
    )
    directus_auth_timeout_ms: int = _int(
        "DIRECTUS_AUTH_TIMEOUT_MS",
        3_000,
        10,
        60_000,
        doc="Directus authentication / authorization timeout",
    )
    live_ws_host: str = _text("LIVE_WS_HOST", "0.0.0.0", doc="WebSocket listen address")  # noqa: S104 - as HTTP_HOST
    live_ws_port: int = _int(
        "LIVE_WS_PORT", 8081, 0, 65_535, doc="WebSocket port (0 = any free port)"
    )
    live_ws_allowed_origins: tuple[str, ...] = _setting(
        "LIVE_WS_ALLOWED_ORIGINS",
        (),
        "a comma-separated list of origins",
        doc="origins allowed for cookie sessions (empty allows none)",
    )
    live_group_prefix: str = _text(
        "LIVE_GROUP_PREFIX",
        "live",
        doc="the per-instance broadcast group is `<prefix>-<INSTANCE_ID>`",
    )
    live_device_event_refresh_ms: int = _int(
        "LIVE_DEVICE_EVENT_REFRESH_MS", 30_000, 50, 86_400_000, doc="device → events map refresh"
    )
    live_ws_max_queue: int = _int(
        "LIVE_WS_MAX_QUEUE",
        256,
        1,
        1_000_000,
        doc="messages a client may fall behind before close 4008",
    )
    live_ws_ping_interval_ms: int = _int(
        "LIVE_WS_PING_INTERVAL_MS",
        20_000,
        50,
        3_600_000,
        doc="WebSocket ping period; no pong within one period closes",
    )
    live_ws_max_message_bytes: int = _int(
        "LIVE_WS_MAX_MESSAGE_BYTES",
        4096,
        64,
        16_777_216,
        doc="largest inbound frame; larger closes with 1009",
    )
    live_ws_max_protocol_errors: int = _int(
        "LIVE_WS_MAX_PROTOCOL_ERRORS", 5, 1, 1000, doc="protocol errors before close 1008"
    )
    # --- live: per-client budgets (docs/pipeline.md, Isolation) -----------------------------------
    live_ws_max_queue_bytes: int = _int(
        "LIVE_WS_MAX_QUEUE_BYTES",
        8 * 1024 * 1024,
        1024,
        2**31,
        doc="outbound bytes queued per connection before close 4008",
    )
    live_ws_max_subscriptions: int = _int(
        "LIVE_WS_MAX_SUBSCRIPTIONS",
        64,
        1,
        100_000,
        doc="topics per connection; one more is answered `error bad_request`",
    )
    live_ws_max_connections_per_user: int = _int(
        "LIVE_WS_MAX_CONNECTIONS_PER_USER",
        20,
        1,
        100_000,
        doc=(
            "open connections per Directus user (`/users/me` `data.id`); one more is refused "
            "with HTTP 429"
        ),
    )
    live_ws_authorizations_per_s: float = _float(
        "LIVE_WS_AUTHORIZATIONS_PER_S",
        10.0,
        0.1,
        10_000,
        doc=(
            "subscribes (each a Directus authorization call) per connection per second; "
            "faster ones wait"
        ),
    )
    live_ws_max_pending_upgrades: int = _int(
        "LIVE_WS_MAX_PENDING_UPGRADES",
        256,
        1,
        100_000,
        doc="sockets still in the HTTP upgrade; more are closed at once",
    )
    live_ws_handshake_timeout_ms: int = _int(
        "LIVE_WS_HANDSHAKE_TIMEOUT_MS",
        10_000,
        50,
        600_000,
        doc=(
            "time from TCP accept to the end of the upgrade (Directus included); then the "
            "socket is dropped"
        ),
    )
    live_ws_reauth_s: float = _float(
        "LIVE_WS_REAUTH_S",
        60.0,
        0.1,
        86_400,
        doc=(
            "period of each live session's re-check against Directus (credentials, subscribed "
            "events, race-control collections), jittered to 75-100 % of it; an expired session "
            "is closed with 4001 (docs/websocket.md)"
        ),
    )
    # --- live: track history on the live port (docs/history.md) ---------------------------------
    live_history_max_window_s: int = _int(
        "LIVE_HISTORY_MAX_WINDOW_S",
        86_400,
        60,
        2_678_400,
        doc="longest window `GET /live/history` serves; a longer one is 400 (docs/history.md)",
    )
    live_history_max_points: int = _int(
        "LIVE_HISTORY_MAX_POINTS",
        20_000,
        100,
        1_000_000,
        doc=(
            "points one history response carries at most; over it the tracks are simplified "
            "(Douglas-Peucker, control passes kept) and the response says so"
        ),
    )
    live_history_max_fixes: int = _int(
        "LIVE_HISTORY_MAX_FIXES",
        250_000,
        1_000,
        10_000_000,
        doc="fixes one history request may read; a window holding more is 422",
    )
    live_history_requests_per_s: float = _float(
        "LIVE_HISTORY_REQUESTS_PER_S",
        2.0,
        0.01,
        1000,
        doc=(
            "history requests per Directus user per second (burst of one second's worth, at "
            "least 1); more are 429 with `Retry-After`"
        ),
    )

    # --- racing domain (docs/racing-domain.md) ----------------------------------------------------
    domain_group: str = _text(
        "DOMAIN_GROUP",
        "domain",
        doc="the racing-domain engine's consumer group (docs/racing-domain.md)",
    )
    domain_refresh_ms: int = _int(
        "DOMAIN_REFRESH_MS",
        10_000,
        50,
        86_400_000,
        doc="stage/control definitions re-read; a changed stage is rebuilt",
    )
    domain_visibility_timeout_ms: int = _int(
        "DOMAIN_VISIBILITY_TIMEOUT_MS",
        120_000,
        100,
        86_400_000,
        doc="how long the engine waits for a fix's row before skipping it",
    )
    domain_yield_backlog: int = _int(
        "DOMAIN_YIELD_BACKLOG",
        5_000,
        0,
        100_000_000,
        doc=(
            "the engine pauses while the durable group has more entries than this to store "
            "(0: never)"
        ),
    )
    domain_read_count: int = _int(
        "DOMAIN_READ_COUNT",
        20_000,
        1,
        1_000_000,
        doc=(
            "entries per domain read; large on purpose: a batch costs per (stage, entry), not "
            "per fix"
        ),
    )
    alert_stopped_kmh: float = _float(
        "ALERT_STOPPED_KMH",
        5.0,
        0,
        100,
        doc="a fix at or below this speed counts as stopped (safety alert `stopped`)",
    )
    alert_stopped_s: float = _float(
        "ALERT_STOPPED_S",
        180.0,
        1,
        86_400,
        doc="a running entry stopped this long (by fix times) raises a `stopped` alert",
    )
    alert_no_signal_s: float = _float(
        "ALERT_NO_SIGNAL_S",
        120.0,
        1,
        10**9,
        doc="a running entry without a fix for this long (wall clock) raises `no_signal`",
    )

    @property
    def consumer_name(self) -> str:
        return self.redis_consumer or self.instance_id

    @property
    def dead_letter_stream(self) -> str:
        return self.dlq_stream or f"{self.redis_stream}:dead"

    @property
    def live_enabled(self) -> bool:
        return bool(self.directus_url)

    @property
    def live_group(self) -> str:
        return f"{self.live_group_prefix}-{self.instance_id}"

    @functools.cached_property
    def quality_rules(self) -> QualityRules:
        """The fix-quality rules, built once: the writer stores verdicts with them and the live
        broadcast judges with the same ones, so the two can never disagree."""
        return QualityRules(
            future_tolerance=timedelta(seconds=self.future_tolerance_s),
            max_speed_kmh=self.max_plausible_speed_kmh,
        )


attrs.resolve_types(Config)


def settings() -> tuple[attrs.Attribute[Any], ...]:
    """Every setting, in declaration order: docs/configuration.md is generated from this
    (`just docs`)."""
    return attrs.fields(Config)


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter()

    def to_int(value: Any, _type: Any) -> int:
        return int(str(value).strip().replace("_", ""), 10)

    def to_float(value: Any, _type: Any) -> float:
        number = float(str(value).strip())
        if not math.isfinite(number):
            raise ValueError("not finite")
        return number

    def to_str(value: Any, _type: Any) -> str:
        return str(value).strip()

    def to_origins(value: Any, _type: Any) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        return tuple(part.strip().rstrip("/") for part in str(value).split(",") if part.strip())

    converter.register_structure_hook(int, to_int)
    converter.register_structure_hook(float, to_float)
    converter.register_structure_hook(str, to_str)
    converter.register_structure_hook_func(lambda t: t == tuple[str, ...], to_origins)
    return converter


_CONVERTER = _make_converter()


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    """Build the Config from `environ` (default: the process environment).

    Raises ConfigError with one line per the first invalid variable.
    """
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    for field in settings():
        name = field.metadata[ENV]
        if name not in env:
            continue
        value = env[name]
        try:
            raw[field.name] = _CONVERTER.structure(value, field.type or str)
        except (ValueError, TypeError) as exc:
            raise ConfigError(_message(field, value)) from exc
    if not raw.get("instance_id"):
        raw["instance_id"] = socket.gethostname() or "processor-1"
    try:
        config = Config(**raw)
    except ValueError as exc:
        field = attrs.fields_dict(Config)[str(exc.args[0])]
        raise ConfigError(_message(field, env.get(field.metadata[ENV], ""))) from exc
    _check_groups(config)
    _check_consistency(config)
    return config


def _check_groups(config: Config) -> None:
    """Three kinds of consumer group read the input stream, and none may be another's:
    - the live broadcaster reads its group with NOACK, resets it to `$` on start and destroys
      it on stop: pointed at the durable group, it would lose records;
    - the domain engine acks what it evaluated: sharing the durable group, it would take and
      ack entries meant for the writer (fixes never stored, no dead letter); sharing a live
      group, the broadcaster would reset and destroy it under the engine.
    Refused at start, naming the setting to change."""
    if config.live_enabled and config.live_group == config.redis_group:
        raise ConfigError(
            f"invalid LIVE_GROUP_PREFIX={config.live_group_prefix!r}: the live group "
            f"LIVE_GROUP_PREFIX-INSTANCE_ID={config.live_group!r} is the durable group "
            f"REDIS_GROUP={config.redis_group!r}; expected a prefix that makes them differ"
        )
    if config.domain_group == config.redis_group:
        raise ConfigError(
            f"invalid DOMAIN_GROUP={config.domain_group!r}: it is the durable group "
            f"REDIS_GROUP={config.redis_group!r}; expected a group of its own"
        )
    if config.domain_group.startswith(f"{config.live_group_prefix}-"):
        raise ConfigError(
            f"invalid DOMAIN_GROUP={config.domain_group!r}: it is named like the live groups "
            f"LIVE_GROUP_PREFIX-INSTANCE_ID ({config.live_group_prefix}-...); expected a name "
            "that no instance's live group can have"
        )


def _check_consistency(config: Config) -> None:
    """Settings each valid on its own that cannot work together."""
    pairs = [
        ("WRITE_RETRY_INITIAL_MS", config.write_retry_initial_ms,
         "WRITE_RETRY_MAX_MS", config.write_retry_max_ms),
        ("PROBE_TIMEOUT_S", config.probe_timeout_s, "PROBE_INTERVAL_S", config.probe_interval_s),
    ]  # fmt: skip
    for name, value, bound_name, bound in pairs:
        if value > bound:
            raise ConfigError(
                f"invalid {name}={value:g}: it is above {bound_name}={bound:g}; expected at "
                f"most {bound_name}"
            )


def _message(field: attrs.Attribute[Any], value: str) -> str:
    # A URL's password never reaches the operator's terminal or the log collector.
    return redact(f"invalid {field.metadata[ENV]}={value!r}: expected {field.metadata[ALLOWED]}")
