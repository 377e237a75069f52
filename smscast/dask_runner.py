"""Where an attempt's shards run (`spec.runner`): the flow's own thread pool, or a Dask cluster.

    threads  send_shard task runs on the flow's ThreadPoolTaskRunner, in the flow's process: they find their
             run's `Runtime` (stop signal, progress, budget) in the process-wide registry (smscast/runtime.py).
    dask     send_shard task runs on a Dask cluster through prefect-dask's DaskTaskRunner: an existing
             scheduler (`dask_address`), or `dask_workers` worker processes on this machine started for the
             attempt. Each task run is a Prefect task run of the flow run like any other (prefect-dask
             carries the flow's context, settings included, to the worker, so the shard reports to the same
             Prefect API and draws on the same global concurrency limits).

A shard in another process cannot reach the flow's memory, so what it needs from its run follows it as data
(`RunLink`) and through the results storage, which every worker must see (S3, or one shared directory):

* the stop: `SharedStop`, a marker file beside the attempt (`_work/.../attempt=N/stop/<run>.json`). A shard
  that meets a campaign-stopping refusal writes it; the flow process writes it when its lock is lost; every
  process polls it every STOP_POLL seconds, so every shard stops sending within about a second wherever it
  runs. The flow process reads it once more at the end, so a stop set by a shard fails the run as it does
  on threads;
* the lock: the heartbeat stays in the flow process. Each shard also reads the lock itself (`LeaseWatch`):
  gone, taken over, or out of lease (a flow process that died or stalled), and the shard stops, as shard
  threads do when `CampaignLock.held` turns false;
* progress: the flow's board moves as each shard reports; inside a shard, progress is logged to the shard's
  own task run (its logs in the UI).

Results are identical to the thread runner's: the same plan, shards, keys and batch ids, written by the same
task. A worker that dies mid-shard loses that task run; Dask runs it again on another worker, which resumes
the shard from its journal (tasks/journal.py) like a re-run would: no batch is sent twice without its keys.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from prefect import unmapped
from prefect.futures import PrefectFuture, wait
from prefect.tasks import Task
from pydantic import ValidationError

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.errors import ConfigError
from smscast.lock import CampaignLock
from smscast.results import AttemptPaths
from smscast.runtime import STOP_POLL, Progress, Runtime, SharedStop, Stop

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]

# Worker processes of a cluster started for the attempt when neither an address nor a count is given.
LOCAL_WORKERS = 2
# Seconds a failing flow waits for the shards still running to stop and record what they sent.
ABORT_WAIT = 30.0
SHARD_PROGRESS_EVERY = 10.0  # seconds between a remote shard's progress lines in its task run's log


@dataclass(frozen=True)
class RunLink:
    """What a shard in another process needs to join its run: the run's key, its stop marker, and the lock it
    sends under (whose lease it checks itself, `margin` seconds early). Pickled with the task's arguments."""

    key: str
    marker: str
    lock: str
    owner: str
    margin: float
    shards_at_once: int


def stop_marker(spec: CampaignSpec, key: str) -> str:
    return f"{AttemptPaths.of(spec).work}/stop/{key}.json"


class LeaseWatch:
    """A shard's own reading of the campaign lock, for a `SharedStop` check: stop once the lock is gone, held
    by another run, or past its lease (less `margin`). A read that fails is judged on the last lease seen."""

    def __init__(
        self, uri: str, owner: str, margin: float, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.uri = uri
        self.owner = owner
        self.margin = margin
        self._clock = clock
        self._expires: float | None = None

    def __call__(self) -> tuple[str, str] | None:
        try:
            held = storage.get_versioned(self.uri)
        except Exception:
            if self._expires is not None and self._expires - self.margin <= self._clock():
                return "lock_lost", "this run's lease ran out while the lock could not be read"
            raise
        if held is None:
            return "lock_lost", "the campaign's lock is gone: the run this shard belongs to has ended"
        try:
            record = json.loads(held[0])
            owner, expires = record.get("owner"), float(record.get("expires_at"))
        except (ValueError, TypeError, AttributeError):
            return "lock_lost", "the campaign's lock is unreadable"
        if owner != self.owner:
            return "lock_lost", "another run took this campaign over"
        self._expires = expires
        if expires - self.margin <= self._clock():
            return (
                "lock_lost",
                "this run's lease ran out without a renewal (its flow process stalled or died)",
            )
        return None


@contextmanager
def joined_run(link: RunLink, rows: int, logger: Logger) -> Iterator[Runtime]:
    """A shard's `Runtime` in a process other than its flow's: the run's stop through storage, and progress
    logged to the shard's task run. (No budget: a spend cap is refused with the Dask runner.)"""
    stop = SharedStop(link.marker, checks=[LeaseWatch(link.lock, link.owner, link.margin)])
    with stop:
        progress = Progress(rows, logger, every=SHARD_PROGRESS_EVERY)
        yield Runtime(progress, stop, None, shards_at_once=link.shards_at_once)


class ThreadShards:
    """Shards as task runs on the flow's own task runner (its thread pool), sharing the process's memory."""

    shards_at_once: int | None = None  # the thread pool's size

    def __init__(self, key: str, lock: CampaignLock) -> None:
        self.key = key
        self.stop = Stop(lock.held)

    def map(self, task: Task[Any, Any], spec: CampaignSpec, shards: list[Any]) -> list[PrefectFuture[Any]]:
        return list(task.map(unmapped(spec), shards, unmapped(self.key)))

    def __enter__(self) -> ThreadShards:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class DaskShards:
    """Shards as task runs on a Dask cluster (see the module's docstring), for one attempt: entering starts
    the stop's watch and connects to (or starts) the cluster; leaving closes them. If the flow fails while
    shards still run, it stops them first and waits for them (ABORT_WAIT at most) to record what they sent."""

    def __init__(self, spec: CampaignSpec, key: str, lock: CampaignLock, logger: Logger) -> None:
        self.spec = spec
        self.key = key
        self.logger = logger
        self._lock = lock
        self.stop = SharedStop(stop_marker(spec, key), lock.held)
        self.shards_at_once: int | None = None
        self._runner: Any = None
        self._futures: list[PrefectFuture[Any]] = []
        self._stack = ExitStack()

    def __enter__(self) -> DaskShards:
        with ExitStack() as stack:
            stack.enter_context(self.stop)
            stack.enter_context(_reachable_api(self.spec, self.logger))
            self._runner = stack.enter_context(dask_task_runner(self.spec))
            threads = self._runner.client.nthreads()
            self.shards_at_once = max(1, sum(threads.values()))
            self.logger.info(
                "campaign %s: shards run on Dask (%d workers, %d threads)",
                self.spec.campaign_id,
                len(threads),
                self.shards_at_once,
            )
            self._stack = stack.pop_all()
        return self

    def map(self, task: Task[Any, Any], spec: CampaignSpec, shards: list[Any]) -> list[PrefectFuture[Any]]:
        lease = self._lock.lease
        link = RunLink(
            key=self.key,
            marker=self.stop.marker,
            lock=self._lock.uri,
            owner=self._lock.owner,
            # The flow stops up to a second before its lease ends; a shard, which looks only every STOP_POLL
            # seconds and whose clock may differ from the flow's machine's, a little earlier still.
            margin=min(2.0, lease / 4) + STOP_POLL,
            shards_at_once=self.shards_at_once or 1,
        )
        parameters = {
            "spec": unmapped(shard_spec(spec)),
            "shard": shards,
            "runtime_key": unmapped(self.key),
            "link": unmapped(link),
        }
        self._futures = list(self._runner.map(task, parameters))
        return self._futures

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc is not None and self._futures:
                # Shards on other machines outlive a failed flow unless told: stop them, let them record.
                self.stop.set("aborted", f"the run failed ({type(exc).__name__}) while shards were sending")
                try:
                    self.stop.publish()
                except Exception:
                    self.logger.warning(
                        "could not record the stop for the shards still running", exc_info=True
                    )
                wait(self._futures, timeout=ABORT_WAIT)
        finally:
            self._stack.close()


def shard_runs(spec: CampaignSpec, key: str, lock: CampaignLock, logger: Logger) -> ThreadShards | DaskShards:
    """Where this attempt's shards run, from its spec."""
    if spec.runner == "dask":
        return DaskShards(spec, key, lock, logger)
    return ThreadShards(key, lock)


def with_runner(
    spec: CampaignSpec,
    runner: str | None = None,
    dask_address: str | None = None,
    dask_workers: int | None = None,
) -> CampaignSpec:
    """`spec` (a recorded campaign, for a retry or a release) with this run's choice of runner, if it makes
    one: `runner` replaces the recorded choice and its cluster; a cluster alone means Dask. Otherwise the
    campaign's own choice stands. ConfigError for a choice the spec refuses."""
    if runner is None and dask_address is None and dask_workers is None:
        return spec
    chosen = runner or "dask"
    dask = chosen == "dask"
    update = {
        "runner": chosen,
        "dask_address": dask_address if dask else None,
        "dask_workers": dask_workers if dask else None,
    }
    if not dask and (dask_address or dask_workers):
        raise ConfigError("--dask-address and --dask-workers need --runner dask")
    try:
        return CampaignSpec.model_validate({**spec.model_dump(), **update})
    except ValidationError as exc:
        reasons = "; ".join(str(e.get("msg", e)) for e in exc.errors())
        raise ConfigError(f"campaign {spec.campaign_id!r}: {reasons}") from None


def shard_spec(spec: CampaignSpec) -> CampaignSpec:
    """The spec the shards get: a local results path made absolute, since a worker's working directory is
    not the flow's. (The path must still name the same shared directory on every worker.)"""
    if storage.is_s3(spec.results) or "://" in spec.results:
        return spec
    return spec.model_copy(update={"results": str(Path(spec.results).resolve())})


def dask_task_runner(spec: CampaignSpec) -> Any:
    """prefect-dask's DaskTaskRunner for the spec: the scheduler at `dask_address`, or a cluster of
    `dask_workers` processes on this machine, one shard at a time each (a shard is already concurrent
    inside: async requests on its own event loop). Typed Any: prefect_dask is imported only for Dask runs."""
    try:
        import distributed
        from prefect_dask.task_runners import DaskTaskRunner
    except ImportError as exc:  # an installation without the Dask runner's packages
        raise ConfigError(f"--runner dask needs prefect-dask and distributed installed ({exc})") from None

    if spec.dask_address:
        return DaskTaskRunner(address=spec.dask_address)
    return DaskTaskRunner(
        cluster_class=distributed.LocalCluster,
        cluster_kwargs={
            "n_workers": spec.dask_workers or LOCAL_WORKERS,
            "processes": True,
            "threads_per_worker": 1,
            "dashboard_address": ":0",  # any free port: two runs on one machine must not collide
        },
    )


@contextmanager
def _reachable_api(spec: CampaignSpec, logger: Logger) -> Iterator[None]:
    """Pin the API this flow run talks to in the settings prefect-dask sends to the workers. Without
    PREFECT_API_URL, the flow's client talks to Prefect's temporary server, and a worker left to its own
    settings would start a temporary server of its own: its task runs and concurrency limits elsewhere."""
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = PREFECT_API_URL.value()
    ctx = FlowRunContext.get()
    if not url and ctx is not None and ctx.client is not None:
        url = str(ctx.client.api_url)
        with temporary_settings({PREFECT_API_URL: url}):
            _warn_if_unreachable(spec, url, logger)
            yield
        return
    if url:
        _warn_if_unreachable(spec, url, logger)
    yield


def _warn_if_unreachable(spec: CampaignSpec, url: str, logger: Logger) -> None:
    if not spec.dask_address:
        return  # workers on this machine reach loopback and local paths alike
    if "//127." in url or "//localhost" in url:
        logger.warning(
            "the Prefect API is %s: Dask workers on other machines cannot reach it (set PREFECT_API_URL to "
            "an address they can)",
            url,
        )
    if not storage.is_s3(spec.results):
        logger.warning(
            "results are on a local path (%s): every Dask worker must see it at the same path (a shared "
            "directory), or use s3://",
            spec.results,
        )
