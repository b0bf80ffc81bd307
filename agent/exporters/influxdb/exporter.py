"""The InfluxDB exporter: encode, queue on disk, deliver in the background.

``write`` encodes the samples to line protocol and appends them to the exporter's
:class:`~wattspan.agent.delivery.DiskQueue`; when it returns, the records are on disk (the
acknowledgement). One background thread reads batches from the queue, posts them, and
advances the queue's checkpoint only after a 2xx, so a restart or crash never loses queued
data. A process crash re-sends at most the batch between its 2xx and the checkpoint write;
a power loss can roll the (not fsynced) checkpoint back further. Either way InfluxDB
deduplicates: same series + timestamp = same point.

Outcomes of a request and what the worker does (the Telegraf/OTel-collector conventions):

==========================  ==============================================================
2xx                         checkpoint advances, ``sent_records_total``
network error, 5xx, 401...  retry the same batch forever (until close), exponential backoff
                            with jitter; ``state = "retrying"``; data keeps queuing on disk
429, 503 + ``Retry-After``  as above, waiting what the server asked for
413                         split the batch in halves and send each (recursively); a single
                            point still too large goes to the dead-letter file
400, 422                    the batch goes to the dead-letter file (never retried), later
                            batches continue
==========================  ==============================================================
"""

from __future__ import annotations

import base64
import gzip as gzip_module
import http
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wattspan.agent.delivery import (
    Backoff,
    DeadLetterFile,
    DiskQueue,
    QueueBatch,
    QueueClosedError,
    parse_retry_after,
)
from wattspan.agent.errors import ConfigError
from wattspan.agent.exporters.influxdb.config import SECTION, InfluxDBConfig, parse_config
from wattspan.agent.exporters.influxdb.lineprotocol import AttributeTags, LineEncoder, split_lines
from wattspan.agent.exporters.influxdb.progress import MlProgress
from wattspan.agent.exporters.influxdb.rollup import SpanRollup, next_generation
from wattspan.agent.exporters.influxdb.transport import (
    Response,
    Transport,
    TransportError,
    make_transport,
)
from wattspan.agent.logthrottle import LogThrottle
from wattspan.agent.sinks import StatValue
from wattspan.collectors.base import Sample

log = logging.getLogger("wattspan.agent.exporters.influxdb")

#: Used by flush() when called with timeout=None (seconds).
DEFAULT_FLUSH_TIMEOUT = 30.0
#: Minimum spacing (s) of repeated log lines about drops and dead letters (counts are summed).
LOG_EVERY = 60.0

_OK, _RETRY, _TOO_LARGE, _REJECTED, _NO_DATABASE = range(5)


@dataclass(slots=True)
class _Chunk:
    """Part of a queue batch on its way to the server (a batch splits on 413)."""

    body: bytes
    count: int
    gz: bytes | None = None


@dataclass(slots=True)
class _Outcome:
    kind: int
    reason: str = ""
    status: int = 0
    retry_after: float | None = None


class InfluxDBExporter:
    """A :class:`~wattspan.agent.sinks.Sink` writing to InfluxDB (API v1 or v2).

    ``host`` becomes the ``host`` tag of every point (unless ``config.tags`` or the sample
    sets one). ``transport`` is only for tests; by default it follows ``config.api``.
    """

    name = "influxdb"

    def __init__(
        self,
        config: InfluxDBConfig,
        *,
        host: str,
        transport: Transport | None = None,
        start: bool = True,
    ) -> None:
        self.config = config
        self.host = host
        global_tags = dict(config.tags)
        if host:
            global_tags.setdefault("host", host)
        self._encoder = LineEncoder(
            precision=config.precision,
            global_tags=global_tags,
            field_tags=config.field_tags,
            attribute_tags=AttributeTags(
                allow=config.metric_tags_allow,
                deny=config.metric_tags_deny,
                max_tags=config.max_metric_tags,
            ),
        )
        self._redact = _redactor(config)
        self._lock = threading.Lock()  # counters and state
        self._cond = threading.Condition(self._lock)  # flush waiters, notified on progress
        self._written = 0
        self._sent = 0
        self._sent_batches = 0
        self._retries = 0
        self._invalid_points = 0
        self._dropped_fields = 0
        self._dead_lettered = 0
        self._dead_lettered_batches = 0
        self._last_error = ""
        self._last_success = 0.0
        self._state = "ok"
        self._failure_kind: object = None
        self._failing_since = 0.0
        self._warned_fields = False
        self._drop_log = LogThrottle(LOG_EVERY)
        self._dead_log = LogThrottle(LOG_EVERY)
        self._flush_waiters = 0
        self._closing = False
        self._closed = False
        self._deadline = float("inf")
        self._interrupt = threading.Event()
        # Sleeps between retries; cut short by close(). Replaceable by tests to record delays.
        self._sleep: Callable[[float], object] = self._interrupt.wait

        try:
            self._queue = DiskQueue(
                config.queue_dir,
                max_bytes=config.max_queue_bytes,
                segment_bytes=config.segment_bytes,
                fsync=config.fsync,
                on_drop=self._on_drop,
                name=f"{self.name}:{config.queue_dir}",
            )
        except (OSError, ValueError) as e:
            # A directory that cannot be created or opened is a setting to fix, not a bug:
            # one line naming the key, no traceback.
            why = getattr(e, "strerror", None) or str(e)
            raise ConfigError(
                f"{SECTION}.queue_dir", f"cannot use {str(config.queue_dir)!r}: {why}"
            ) from None
        self._ml_progress = MlProgress() if config.ml_progress else None
        self._rollup: SpanRollup | None = None
        try:
            if config.rollup:
                self._rollup = SpanRollup(
                    generation=next_generation(Path(config.queue_dir)),
                    precision=config.precision,
                    max_open=config.rollup_max_minutes,
                )
            self._dead = DeadLetterFile(
                Path(config.queue_dir) / "deadletter.jsonl", max_bytes=config.max_dead_letter_bytes
            )
            self._transport = transport if transport is not None else make_transport(config)
        except BaseException:
            self._queue.close()
            raise
        self._backoff = Backoff(config.retry_initial_interval, config.retry_max_interval)
        self._thread = threading.Thread(
            target=self._run, name=f"wattspan-exporter-{self.name}", daemon=True
        )
        if start:
            self.start()

    def start(self) -> None:
        """Start the delivery thread (done by the constructor unless ``start=False``)."""
        if not self._thread.is_alive():
            self._thread.start()

    @property
    def dead_letter_path(self) -> Path:
        """Where rejected batches are written (JSONL, one batch per line)."""
        return self._dead.path

    # ------------------------------------------------------------------ Sink API

    def write(self, samples: Sequence[Sample]) -> None:
        """Encode and append to the disk queue; on return the records are durable.

        Raises ``RuntimeError`` after close and ``OSError`` when the queue cannot be written
        (e.g. disk full): the caller must then not acknowledge the records.
        """
        if self._closing:
            raise RuntimeError("influxdb exporter is closed")
        if self._ml_progress is not None:
            derived = self._ml_progress.derive(samples)
            if derived:
                samples = [*samples, *derived]
        if self._rollup is not None and any(s.source == "spans" for s in samples):
            # The minutes' new cumulative points go into the same append as their spans:
            # acknowledged together, or (the append raised) neither.
            rows = samples
            self._rollup.write(rows, lambda points: self._append([*rows, *points]))
        else:
            self._append(samples)

    def _append(self, samples: Sequence[Sample]) -> None:
        frames, counts = self._encoder.encode_frames(samples, self.config.batch_size)
        if counts.dropped_points or counts.dropped_fields:
            with self._lock:
                self._invalid_points += counts.dropped_points
                self._dropped_fields += counts.dropped_fields
            if not self._warned_fields:
                self._warned_fields = True
                log.warning(
                    "influxdb exporter: dropping values line protocol cannot carry (NaN/inf "
                    "floats, ints beyond int64, points left without fields); counted in "
                    "dropped_fields_total / dropped_records_total, logged once"
                )
        if not frames:
            return
        self._queue.append_many(frames)
        with self._lock:
            self._written += counts.points

    def flush(self, timeout: float | None = None) -> None:
        """Send what is queued now and wait up to ``timeout`` s (None: 30 s) for it."""
        self.drain(timeout)

    def drain(self, timeout: float | None = None) -> bool:
        """Like :meth:`flush`; returns True when nothing is left queued."""
        timeout = DEFAULT_FLUSH_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flush_waiters += 1
        try:
            self._queue.wakeup()
            with self._cond:
                while self._queue.queued_items > 0 and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    # Bounded wait: quota drops in writer threads change the count too.
                    self._cond.wait(min(remaining, 0.5))
                return self._queue.queued_items == 0
        finally:
            with self._cond:
                self._flush_waiters -= 1

    def close(self, timeout: float | None = None) -> None:
        """Try to deliver what is queued within ``timeout`` s (None: ``close_timeout``),
        then stop. Undelivered records stay in the queue directory for the next start."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            timeout = self.config.close_timeout if timeout is None else max(0.0, timeout)
            self._deadline = time.monotonic() + timeout
        self._interrupt.set()
        self._queue.wakeup()
        if self._thread.is_alive():
            # A request in flight is bounded by the deadline too (see _post); the grace
            # covers connection teardown.
            self._thread.join(timeout + 2.0)
            if self._thread.is_alive():
                log.warning("influxdb exporter: delivery thread did not stop in time")
        try:
            self._transport.close()
        finally:
            self._queue.close()
            with self._cond:
                self._closed = True
                self._cond.notify_all()
        left = self._queue.queued_items
        if left:
            log.info(
                "influxdb exporter: closed with %d records queued in %s; they are sent "
                "on the next start",
                left,
                self.config.queue_dir,
            )

    def stats(self) -> dict[str, StatValue]:
        """Self-metrics. Keys ending in ``_total`` are counters, the rest gauges/strings."""
        q = self._queue.stats()
        with self._lock:
            return {
                "state": self._state,
                "last_error": self._last_error,
                "queued_records": q["queued_items"],
                "queue_bytes": q["disk_bytes"],
                "last_success_timestamp_seconds": self._last_success,
                "written_records_total": self._written,
                "sent_records_total": self._sent,
                "sent_batches_total": self._sent_batches,
                "retries_total": self._retries,
                "dropped_records_total": q["dropped_items_total"] + self._invalid_points,
                "queue_dropped_records_total": q["dropped_items_total"],
                "dropped_fields_total": self._dropped_fields,
                "dead_lettered_records_total": self._dead_lettered,
                "dead_lettered_batches_total": self._dead_lettered_batches,
                **(self._rollup.stats() if self._rollup is not None else {}),
            }

    def __repr__(self) -> str:
        # config's repr already hides secrets; keep this one short anyway.
        queue = str(self.config.queue_dir)
        return f"InfluxDBExporter(endpoint={self.config.endpoint!r}, queue={queue!r})"

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        try:
            self._loop()
        except QueueClosedError:
            pass
        except Exception:  # pragma: no cover - a bug; keep the agent alive, say it loudly
            log.exception("influxdb exporter: delivery thread crashed")
            with self._lock:
                self._state = "failed"

    def _loop(self) -> None:
        cfg = self.config
        q = self._queue
        while True:
            if self._closing:
                if time.monotonic() >= self._deadline or q.unread_items == 0:
                    return
                min_items, timeout = 1, 0.0
            elif self._flush_waiters:
                # Someone waits in flush(): send whatever is there, as soon as it is there.
                min_items, timeout = 1, cfg.flush_interval
            else:
                # Wait for a full batch, or flush_interval for a partial one.
                min_items, timeout = cfg.batch_size, cfg.flush_interval
            if q.wait(min_items, timeout) == 0:
                continue
            batch = q.read(cfg.batch_size, cfg.max_batch_bytes)
            if batch is None:
                continue
            if not self._deliver(batch):
                return

    def _deliver(self, batch: QueueBatch) -> bool:
        """Send one queue batch to completion; False if close interrupted it."""
        cfg = self.config
        chunks: deque[_Chunk] = deque()
        body = b"".join(batch.payloads)
        if len(body) > cfg.max_batch_bytes and batch.count > 1:
            # One write() call larger than max_batch_bytes: split before the server has to.
            chunks.extend(self._split(_Chunk(body, batch.count)))
        else:
            chunks.append(_Chunk(body, batch.count))
        undelivered = batch.count
        while chunks:
            if self._queue.is_stale(batch):
                # The quota deleted this data while we were retrying: give up on it.
                self._queue.abandon(batch, undelivered)
                self._progress()
                return True
            chunk = chunks[0]
            outcome = self._post(chunk)
            if outcome is None:  # closing, out of time
                self._queue.abandon(batch)
                return False
            if outcome.kind == _OK:
                chunks.popleft()
                undelivered -= chunk.count
                self._succeeded(chunk.count)
                continue
            if outcome.kind == _TOO_LARGE and chunk.count > 1:
                chunks.popleft()
                chunks.extendleft(reversed(self._split(chunk)))
                continue
            if outcome.kind in (_TOO_LARGE, _REJECTED):
                chunks.popleft()
                undelivered -= chunk.count
                self._dead_letter(chunk, outcome)
                continue
            if outcome.kind == _NO_DATABASE and self._create_database():
                continue
            if not self._retry_wait(outcome):
                self._queue.abandon(batch)
                return False
        self._queue.commit(batch)
        self._progress()
        return True

    def _split(self, chunk: _Chunk) -> list[_Chunk]:
        lines = split_lines(chunk.body, chunk.count)
        half = len(lines) // 2
        return [
            _Chunk(b"\n".join(part) + b"\n", len(part))
            for part in (lines[:half], lines[half:])
            if part
        ]

    def _post(self, chunk: _Chunk) -> _Outcome | None:
        cfg = self.config
        timeout = cfg.timeout
        if self._closing:
            timeout = min(timeout, self._deadline - time.monotonic())
            if timeout <= 0:
                return None
        body = chunk.body
        if cfg.gzip:
            if chunk.gz is None:
                # Level 1: ~5x smaller line protocol for a fraction of level 9's CPU.
                chunk.gz = gzip_module.compress(chunk.body, compresslevel=1, mtime=0)
            body = chunk.gz
        try:
            r = self._transport.post(body, gzipped=cfg.gzip, timeout=timeout)
        except TransportError as e:
            return _Outcome(
                _RETRY, f"server unreachable ({_sanitise(str(e), self._redact, headers=False)})"
            )
        return self._classify(r)

    def _classify(self, r: Response) -> _Outcome:
        status = r.status
        if 200 <= status < 300:
            return _Outcome(_OK, status=status)
        detail = _error_text(r)
        reason = _summary(r, detail, self._redact)
        if status == 413:
            return _Outcome(_TOO_LARGE, reason, status)
        if status in (400, 422):
            return _Outcome(_REJECTED, reason, status)
        if status == 404 and "database not found" in detail and self.config.create_database:
            return _Outcome(_NO_DATABASE, reason, status)
        retry_after = parse_retry_after(r.header("retry-after")) if status in (429, 503) else None
        return _Outcome(_RETRY, reason, status, retry_after)

    def _create_database(self) -> bool:
        try:
            r = self._transport.create_database(self.config.timeout)
        except TransportError:
            return False
        if 200 <= r.status < 300 and '"error"' not in r.body:
            log.info("influxdb exporter: created database %r", self.config.database)
            return True
        log.warning(
            "influxdb exporter: database %r does not exist and creating it failed (%s)",
            self.config.database,
            _summary(r, _error_text(r), self._redact),
        )
        return False

    def _retry_wait(self, outcome: _Outcome) -> bool:
        """Record the failure, sleep the backoff; False when close ran out of time."""
        kind = "unreachable" if outcome.status == 0 else outcome.status
        now = time.monotonic()
        with self._lock:
            self._retries += 1
            self._last_error = outcome.reason
            entering = self._state != "retrying"
            changed = entering or kind != self._failure_kind
            if entering:
                self._failing_since = now
            self._state = "retrying"
            self._failure_kind = kind
            queued = self._queue.queued_items
        if changed:
            # One line per change of state, not one per failed request.
            log.warning(
                "influxdb exporter: %s, queuing on disk (%d records queued) and retrying "
                "with backoff",
                outcome.reason,
                queued,
            )
        delay = self._backoff.next()
        if outcome.retry_after is not None:
            delay = outcome.retry_after
        if self._closing:
            self._interrupt.clear()
            delay = min(delay, self._deadline - time.monotonic())
            if delay <= 0:
                return False
        self._sleep(delay)
        return not (self._closing and time.monotonic() >= self._deadline)

    def _succeeded(self, count: int) -> None:
        self._backoff.reset()
        with self._lock:
            self._sent += count
            self._sent_batches += 1
            self._last_success = time.time()
            recovered = self._state != "ok"
            failed_for = time.monotonic() - self._failing_since
            self._state = "ok"
            self._failure_kind = None
            queued = self._queue.queued_items
        if recovered:
            log.info(
                "influxdb exporter: delivering again after %.0f s of failures, %d records queued",
                failed_for,
                queued,
            )

    def _dead_letter(self, chunk: _Chunk, outcome: _Outcome) -> None:
        entry: dict[str, Any] = {
            "exporter": self.name,
            "endpoint": self.config.endpoint,
            "status": outcome.status,
            "reason": outcome.reason,
            "records": chunk.count,
            "line_protocol": chunk.body.decode("utf-8", "replace"),
        }
        try:
            self._dead.write(entry)
            where = str(self._dead.path)
        except OSError as e:
            where = f"nowhere: writing {self._dead.path} failed: {e}"
        with self._lock:
            self._dead_lettered += chunk.count
            self._dead_lettered_batches += 1
            self._last_error = outcome.reason
            n = self._dead_log.hit()
            recovered = self._state != "ok"
            self._state = "ok"  # the server answered: it is reachable
            self._failure_kind = None
        self._backoff.reset()
        if n:
            log.error(
                "influxdb exporter: server rejected %d records (%s); %s written to %s, "
                "not retried; later data continues",
                chunk.count,
                outcome.reason,
                "batch" if n == 1 else f"{n} batches since the last message,",
                where,
            )
        if recovered:
            log.info("influxdb exporter: server reachable again")

    def _on_drop(self, items: int, nbytes: int) -> None:
        """Queue quota callback (writer thread)."""
        with self._cond:
            n = self._drop_log.hit(items)
            self._cond.notify_all()
        if n:
            log.warning(
                "influxdb exporter: queue full (max_queue_bytes=%d), dropped the oldest %d "
                "records; see dropped_records_total",
                self.config.max_queue_bytes,
                n,
            )

    def _progress(self) -> None:
        with self._cond:
            self._cond.notify_all()


#: Bound of the server's message in a failure summary (``last_error``, logs, dead letters).
MAX_DETAIL_CHARS = 200
_REDACTED = "[redacted]"
# "Name: value" (an HTTP header, or a proxy's dump of them) or a request/status line.
_HEADER_LINE = re.compile(
    r"^\s*(?:[A-Za-z][A-Za-z0-9_-]*\s*:|(?:GET|POST|PUT|HEAD|DELETE|OPTIONS|PATCH)\s|HTTP/)"
)
# A credential after a word that announces one ("Authorization: Token abc...", "token=...").
_CREDENTIAL = re.compile(
    r"(?i)\b(authorization|cookie|api[-_]?key|token|bearer|basic|password|passwd|secret)"
    r"(\W{1,4})[A-Za-z0-9+/=_.:~-]{8,}"
)
# Long runs of base64/hex-ish characters: what API tokens and session ids look like
# (trace ids, 32 hex digits, stay).
_OPAQUE = re.compile(r"[A-Za-z0-9+/_-]{40,}={0,2}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _redactor(config: InfluxDBConfig) -> re.Pattern[str] | None:
    """One pattern matching every form of this exporter's own secrets that a server or
    proxy could echo: the token, the password, and the basic-auth credential."""
    forms: set[str] = set()
    if config.token is not None:
        forms.add(config.token.reveal())
    if config.password is not None:
        pw = config.password.reveal()
        cred = f"{config.username or ''}:{pw}"
        forms |= {pw, cred, base64.b64encode(cred.encode()).decode("ascii")}
    forms.discard("")
    if not forms:
        return None
    return re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)))


def _sanitise(text: str, redact: re.Pattern[str] | None, *, headers: bool = True) -> str:
    """``text`` made safe to show on ``/metrics``, in logs and in dead letters: our own
    secrets and anything credential-like replaced, header-like lines dropped (unless
    ``headers`` is false: exception texts start with ``Type:``), control characters
    flattened, at most :data:`MAX_DETAIL_CHARS` characters."""
    if redact is not None:
        text = redact.sub(_REDACTED, text)
    lines = [
        ln for ln in text.splitlines() if ln.strip() and not (headers and _HEADER_LINE.match(ln))
    ]
    text = " ".join(ln.strip() for ln in lines)
    text = _CREDENTIAL.sub(lambda m: m.group(1) + m.group(2) + _REDACTED, text)
    text = _OPAQUE.sub(_REDACTED, _CONTROL.sub(" ", text))
    if len(text) > MAX_DETAIL_CHARS:
        text = text[: MAX_DETAIL_CHARS - 3].rstrip() + "..."
    return text


def _summary(r: Response, detail: str, redact: re.Pattern[str] | None) -> str:
    """``HTTP <status> <standard reason phrase>[: <sanitised server message>]``.

    The reason phrase is the standard one for the code: a proxy's own phrase is as
    untrusted as its body. The message is InfluxDB's ``error``/``message`` (or the
    ``X-Influxdb-Error`` header, or a plain-text body); an HTML page (a proxy's) is left out.
    """
    try:
        phrase = http.HTTPStatus(r.status).phrase
    except ValueError:
        phrase = ""
    head = f"HTTP {r.status} {phrase}".strip()
    if detail.lstrip().startswith("<"):
        detail = ""
    detail = _sanitise(detail, redact) if detail else ""
    return f"{head}: {detail}" if detail else head


def _error_text(r: Response) -> str:
    """The server's error message: the JSON body's ``error`` (``message`` for v2), else the
    raw body, else 1.x's ``X-Influxdb-Error`` header (latin-1 mangled by HTTP clients)."""
    body = r.body
    if body.startswith("{"):
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            for key in ("error", "message"):
                if isinstance(data.get(key), str):
                    return data[key]
    return body or r.header("x-influxdb-error") or ""


def from_config(
    section: dict[str, Any],
    *,
    state_dir: Path,
    host: str,
    env: dict[str, str] | None = None,
) -> InfluxDBExporter:
    """Build the exporter from an ``[exporters.influxdb]`` table (raises ConfigError).

    ``state_dir`` is the agent's state directory (the queue defaults to
    ``state_dir/influxdb``); ``host`` is this node's name (the ``host`` tag); ``env``
    defaults to ``os.environ`` for the secret fallbacks.
    """
    config = parse_config(section, state_dir=Path(state_dir), env=env)
    return InfluxDBExporter(config, host=host)
