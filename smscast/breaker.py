"""The circuit breaker: a campaign pauses when the provider fails or refuses too many of the rows it is sent.

The window is the last `min_sample` rows (spec.min_sample) whose outcome the provider decided, in the order
their answers came back, across every shard thread of one run (`breaker_for`: one breaker per run, on the
run's shared `Runtime`). A row counts as

* ok: accepted, or held by the provider in a state we cannot read (`unknown` inside an answer);
* outage: failed by the provider — 5xx answers, connect errors, timeouts and dropped connections once the
  engine's retries are spent, 429s past their budget, per-row transient codes;
* content: refused — a 4xx refusal of the request, a per-row rejection.

Rows smscast itself decided not to send never count: invalid, suppressed or held rows are not planned, rows
over the spend cap are ours, and once the campaign's stop is set nothing more is counted. When the window is
full and its failures exceed `max_failure_rate` of it, the breaker opens for the rest of the run: it sets
the campaign's stop with the code `circuit_open`, so every shard stops sending, and each batch not sent yet
ends `failed` with that code (never sent: safe to send again). The cause is whichever kind of failure
fills more of the window. A row counts once, with its final outcome, after the engine's retries: a blip that
a retry absorbs never counts, at the price that in an outage the batches already in flight finish their
retries before the circuit opens (no new batch starts after it).

Pausing, not stopping: a shard that ends with the circuit open writes no results part, so its journal (the
batches the provider answered) stays the record a re-run resumes from, and it keeps what it made of its
rows in a paused view (`park`) for the summary. The attempt is then left unsealed (`pause_attempt`): its
summary says it paused and why, `smscast.campaign.paused` is emitted, and the run fails with
CircuitOpenError. Running the same `smscast send` again (or `smscast retry`, which finishes an unfinished
attempt first) resumes it from its plan: the answered batches are kept and only the rest are sent. (A batch
the provider refused whole and the engine was splitting when the circuit opened is journalled with its
unsent halves `failed`, `circuit_open`: those rows stay so after the resume, and `smscast retry` sends them.)
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from operator import itemgetter
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import polars as pl

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.errors import CampaignStopError
from smscast.pricing import OVER_BUDGET
from smscast.providers.base import RowOutcome
from smscast.results import AttemptPaths
from smscast.runtime import Runtime, Stop
from smscast.status import Status

if TYPE_CHECKING:
    from smscast.tasks.manifest import Manifest

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]

CIRCUIT_OPEN = "circuit_open"  # the stop's code, and the error_code of rows the open circuit kept back
ABORTED = "aborted"  # rows kept back by any other stop (refused credentials, a lost lock)
# Codes of `failed` rows that the provider never saw: our own decisions, not its answers.
OURS: frozenset[str] = frozenset({CIRCUIT_OPEN, ABORTED, OVER_BUDGET})


class Cause(StrEnum):
    OUTAGE = "outage"  # the provider failed: 5xx, connect errors, timeouts
    CONTENT = "content"  # the provider refused: 4xx refusals, per-row rejections


_STATUS = itemgetter(0)  # RowOutcome.status
LABELS = {Cause.OUTAGE: "provider outage", Cause.CONTENT: "content refused"}


@dataclass(frozen=True)
class Opening:
    """Why the circuit opened: the window as it stood."""

    cause: Cause
    window: int
    outage: int
    content: int
    max_failure_rate: float

    @property
    def failed(self) -> int:
        return self.outage + self.content

    @property
    def share(self) -> float:
        return self.failed / self.window

    @property
    def reason(self) -> str:
        # Starts with the cause's label: `cause_of` reads it back where only the stop's text travelled.
        kinds = [
            f"{self.outage:,} failed by the provider (5xx, connect errors, timeouts)" if self.outage else "",
            f"{self.content:,} refused (4xx refusals, per-row rejections)" if self.content else "",
        ]
        return (
            f"{LABELS[self.cause]}: {self.failed:,} of the last {self.window:,} rows sent failed or were "
            f"refused ({self.share:.0%}, above --max-failure-rate {self.max_failure_rate:g}): "
            + ", ".join(k for k in kinds if k)
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cause": self.cause.value, "failure_share": self.share, "reason": self.reason}


class CircuitBreaker:
    """The sliding window, shared by every shard thread of a run (`observe` is atomic). It opens once: the
    first observation that tips it returns the Opening, every later one None."""

    def __init__(self, max_failure_rate: float, min_sample: int) -> None:
        self.max_failure_rate = max_failure_rate
        self.min_sample = max(1, min_sample)
        self._chunks: deque[list[Any]] = deque()  # [kind, rows], oldest first: a batch is a chunk, not rows
        self._counts = {"ok": 0, Cause.OUTAGE: 0, Cause.CONTENT: 0}
        self._lock = threading.Lock()
        self.opening: Opening | None = None

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {str(k): v for k, v in self._counts.items()}

    def observe(self, ok: int = 0, outage: int = 0, content: int = 0) -> Opening | None:
        with self._lock:
            if self.opening is not None:
                return None
            for kind, n in (("ok", ok), (Cause.OUTAGE, outage), (Cause.CONTENT, content)):
                if n > 0:
                    self._chunks.append([kind, n])
                    self._counts[kind] += n
            self._evict()
            full = sum(self._counts.values()) >= self.min_sample
            failed = self._counts[Cause.OUTAGE] + self._counts[Cause.CONTENT]
            if not full or failed <= self.max_failure_rate * self.min_sample:
                return None
            out, refused = self._counts[Cause.OUTAGE], self._counts[Cause.CONTENT]
            cause = Cause.OUTAGE if out >= refused else Cause.CONTENT
            self.opening = Opening(cause, self.min_sample, out, refused, self.max_failure_rate)
            return self.opening

    def _evict(self) -> None:
        extra = sum(self._counts.values()) - self.min_sample
        while extra > 0:
            chunk = self._chunks[0]
            gone = min(extra, chunk[1])
            chunk[1] -= gone
            self._counts[chunk[0]] -= gone
            extra -= gone
            if chunk[1] == 0:
                self._chunks.popleft()

    def watch(self, stop: Stop, outcomes: Sequence[RowOutcome], *, answer: bool, times: int = 1) -> None:
        """Count rows the engine has just settled, and open the circuit if they tip the window. `answer`: the
        per-row outcomes of a provider's answer (an `unknown` there is a message the provider holds), else
        the outcome the engine gave a whole request (`unknown` there: a timeout or a dropped connection).
        `times`: each outcome stands for that many rows."""
        if stop.is_set():  # what comes back after a stop says nothing more about the provider
            return
        # Counted in C: this runs for every answer, and most answers are all `accepted`.
        statuses = Counter(map(_STATUS, outcomes))
        unknown = statuses[Status.UNKNOWN]
        ok = statuses[Status.ACCEPTED] + (unknown if answer else 0)
        content = statuses[Status.REJECTED]
        outage = 0 if answer else unknown
        if statuses[Status.FAILED]:
            outage += sum(1 for o in outcomes if o.status == Status.FAILED and o.error_code not in OURS)
        opening = self.observe(ok * times, outage * times, content * times)
        if opening is not None:
            trip(stop, opening)


# -- one breaker per run, and what it did to the run's stop -------------------------------------------------

_BREAKERS: weakref.WeakKeyDictionary[Runtime, CircuitBreaker] = weakref.WeakKeyDictionary()
_OPENINGS: weakref.WeakKeyDictionary[Stop, Opening] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def breaker_for(runtime: Runtime, spec: CampaignSpec) -> CircuitBreaker:
    """The run's breaker: every shard of a run is handed the same Runtime (smscast/runtime.py registry), so
    they share one window. Kept beside the Runtime, and gone with it."""
    with _LOCK:
        found = _BREAKERS.get(runtime)
        if found is None:
            found = _BREAKERS[runtime] = CircuitBreaker(spec.max_failure_rate, spec.min_sample)
        return found


def trip(stop: Stop, opening: Opening) -> None:
    stop.set(CIRCUIT_OPEN, opening.reason)
    if stop.code == CIRCUIT_OPEN:  # not if another stop came first: then it is that stop's story
        with _LOCK:
            _OPENINGS.setdefault(stop, opening)


def opening_of(stop: Stop) -> Opening | None:
    with _LOCK:
        return _OPENINGS.get(stop)


def cause_of(stop: Stop) -> Cause:
    """The cause of a stop set by an open circuit, also where only its code and reason reached this process
    (a stop carried over from another process)."""
    opening = opening_of(stop)
    if opening is not None:
        return opening.cause
    return Cause.CONTENT if (stop.reason or "").startswith(LABELS[Cause.CONTENT]) else Cause.OUTAGE


def not_sent(stop: Stop) -> tuple[str, str]:
    """The error code and message of a batch the engine did not send because the campaign's stop is set."""
    if stop.code == CIRCUIT_OPEN:
        return CIRCUIT_OPEN, f"not sent: the campaign paused, its circuit breaker opened ({stop.reason})"
    return ABORTED, f"not sent: campaign stopped ({stop.reason})"


class CircuitOpenError(CampaignStopError):
    """The attempt paused on an open circuit: its rows are recorded as far as they went, and running the
    campaign again resumes it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=CIRCUIT_OPEN)


# -- pausing an attempt -------------------------------------------------------------------------------------


def paused_view(paths: AttemptPaths, shard: int) -> str:
    """What a paused shard made of its rows: read only while its attempt is paused and it has no part."""
    return f"{paths.work}/paused/shard={shard:05d}.parquet"


def park(spec: CampaignSpec, shard: int, planned: pl.DataFrame, outcomes: pl.DataFrame) -> None:
    """For a shard that ends with the circuit open (tasks/send.py), instead of its results part: its rows
    as they stand, for the paused summary. Its journal stays: a re-run resumes the shard from it."""
    from smscast.tasks.persist import result_rows

    storage.write_parquet(result_rows(spec, planned, outcomes), paused_view(AttemptPaths.of(spec), shard))


def paused_rows(spec: CampaignSpec, manifest: Manifest) -> pl.DataFrame:
    """The paused attempt's rows as they stand: each shard's results part, else its paused view, else (a
    shard with neither) its planned rows with no outcome; and the rows it was never to send."""
    from smscast.tasks.outcomes import outcomes_frame
    from smscast.tasks.persist import result_rows

    paths = AttemptPaths.of(spec)
    frames = []
    for ref in manifest.shards:
        for uri in (paths.part(ref.shard), paused_view(paths, ref.shard)):
            if storage.exists(uri):
                frames.append(storage.read_parquet(uri))
                break
        else:
            planned = storage.read_parquet(paths.plan_shard(ref.shard))
            frames.append(result_rows(spec, planned, outcomes_frame([])))  # unknown, no_outcome_recorded
    frames.append(result_rows(spec, storage.read_parquet(paths.plan_unsent), None))
    return pl.concat(frames, how="diagonal_relaxed").sort("row_index")


class _Requests(Protocol):
    @property
    def requests(self) -> dict[str, int]: ...


def pause_attempt(
    spec: CampaignSpec,
    manifest: Manifest,
    stop: Stop,
    reports: Iterable[_Requests],
    logger: Logger,
    seconds: Mapping[str, float] | None = None,
) -> NoReturn:
    """The end of an attempt whose circuit opened (tasks/dispatch.py `run_attempt`, in place of sealing it):
    left unsealed, so that running the campaign again resumes it; summarised as it stands, with the cause;
    `smscast.campaign.paused` emitted; then CircuitOpenError."""
    from smscast.events import emit_campaign_paused
    from smscast.tasks.next_steps import next_steps
    from smscast.tasks.report import report, tell

    opening = opening_of(stop)
    paused = (
        opening.to_dict() if opening is not None else {"cause": cause_of(stop).value, "reason": stop.reason}
    )
    requests: dict[str, int] = {}
    for r in reports:
        for k, v in r.requests.items():
            requests[k] = requests.get(k, 0) + v
    rows = paused_rows(spec, manifest)
    summary = report(
        rows,
        spec,
        logger,
        results_uri=AttemptPaths.of(spec).dir,
        seconds=dict(seconds or {}),
        requests=requests,
        paused=paused,
    )
    emit_campaign_paused(summary.to_dict(), spec.results, logger)
    for line in next_steps(summary, spec, completed=False):
        tell(logger, logging.WARNING, line)
    raise CircuitOpenError(
        f"campaign {spec.campaign_id} paused: {stop.reason}. Rows not sent yet are failed ({CIRCUIT_OPEN}); "
        f"once the cause is fixed, run the same `smscast send` again (or `smscast retry`) to resume it"
    )
