"""``--executor dask://HOST:PORT``: a load test's runs as tasks on a Dask distributed cluster.

Theory of operation
-------------------
Hosts run ``dask worker SCHEDULER --nthreads 1 --resources sweeperd_host=1``; every run is
submitted with ``resources={"sweeperd_host": 1}``, so Dask never starts two on one host (the
scheduling is Dask's; this module only submits, watches and gathers).  A task is
:func:`_on_worker` (pickled by reference: the workers need the same sweeperd installed, which
the task checks) given the encoded :class:`~sweeperd.loadtest.executor.Task`; it runs
:func:`~sweeperd.loadtest.executor.execute` — the same run function as a local run — in a
private temporary directory on its host, and returns the encoded
:class:`~sweeperd.loadtest.executor.Done` with that directory's files (plain msgpack data:
no pickled result).

Progress: each task says when it starts (``Worker.log_event`` on a topic of this load test's
own, read by ``Client.subscribe_topic``), so the load test prints where each run went and
counts attempts; each result is reported as it completes.

Failures, by design: a run whose daemon fails is ``ok: false`` with its error (as locally).
A worker that dies mid-run (its host lost, the process killed) is Dask's to handle: the
scheduler runs the task again on another worker, up to ``distributed.scheduler.allowed-failures``
(3 by default) deaths, after which the run is ``ok: false`` naming ``KilledWorker``; the
daemon the dead worker started stops on its own (``run.exit_with_parent``), so a restarted
worker never runs beside it.  The row's ``attempts`` says how many times a run was started.
If no worker offering ``sweeperd_host`` is left for :data:`NO_WORKER_S`, the runs not done
are failed, naming that.  Ctrl-C (or SIGTERM) sets a Dask ``Event`` the running tasks poll
every :data:`POLL_STOP_S` (they stop their daemons and return), cancels the rest, and lets the
load test write the report of the runs done.  While the runs are watched, SIGINT and SIGTERM
only note themselves (:class:`_HeldSignals`) and the loop acts on them between its calls to
Dask, within :data:`WAIT_S` (a second signal at once, to break a call that hangs): raised
inside one of the client's synchronous calls, an exception could leave the next call (the
stop itself) waiting for ever — CI saw a Ctrl-C unanswered for 120 s.  The stop is given
:data:`STOP_S` and then the load test goes on without it, saying so.

Security: a scheduler on a loopback address is reached over plain TCP; any other over TLS
only (``tls://``), with Dask's own TLS settings (``distributed.comm.tls.ca-file``,
``distributed.comm.tls.client.cert`` and ``.key``, from Dask's config files or
``DASK_DISTRIBUTED__COMM__TLS__...`` variables); without them the load test refuses to start.

No module but this one imports Dask.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import dask.config
import distributed
from distributed import Client, Event, Future
from distributed.client import FutureCancelledError

from sweeperd.loadtest import executor as ex
from sweeperd.loadtest.outdir import OutDir

RESOURCE = "sweeperd_host"
CONNECT_S = 30.0  # to reach the scheduler
FIRST_WORKER_S = 60.0  # for a worker offering RESOURCE to be there at the start
NO_WORKER_S = 300.0  # with runs left and no such worker: they are failed
POLL_STOP_S = 2.0
WAIT_S = 0.25  # between looks at what ended and started
STOP_S = 30.0  # for the scheduler to take the stop (the Event set, the rest cancelled)
TLS_KEYS = ("distributed.comm.tls.ca-file", "distributed.comm.tls.client.cert")


class _HeldSignals:
    """SIGINT and SIGTERM noted, not raised, while the block runs on the main thread;
    :meth:`act` (called where no Dask call is under way) then does what the handler before
    would have done: raises KeyboardInterrupt for SIGINT, calls the load test's SIGTERM
    handler (which raises its own interruption).  A second signal before that is acted on
    at once (a Dask call that does not return can still be broken by a second Ctrl-C).  A
    signal ignored stays ignored; off the main thread nothing changes (Python delivers
    signals to the main thread only)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.got: int | None = None
        self.before: dict[int, Any] = {}

    def __enter__(self) -> _HeldSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                old = signal.getsignal(sig)
                if old is not signal.SIG_IGN:
                    self.before[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if self.got is None:
            self.got = signum
            return
        # a second signal before the first was acted on: a Dask call under way does not
        # return (the user presses Ctrl-C again): act at once, inside it
        self.got = None
        self._do(signum, frame)

    def _do(self, signum: int, frame: FrameType | None) -> None:
        old = self.before.get(signum)
        if callable(old):
            old(signum, frame)  # (Python's SIGINT handler raises KeyboardInterrupt)
        raise KeyboardInterrupt  # SIG_DFL: stop as on Ctrl-C, the report written

    def act(self) -> None:
        """Raise now what a signal noted meant (nothing if none came)."""
        if self.got is None:
            return
        signum, self.got = self.got, None
        self._do(signum, None)

    def __exit__(self, *_exc: object) -> None:
        for sig, old in self.before.items():
            signal.signal(sig, old)
        self.before.clear()


class Cancelled(RuntimeError):
    """The load test was interrupted: the task stops its daemon."""


class SchedulerLost(RuntimeError):
    """The client lost its scheduler (Dask cancels every future then): the load test ends
    with the report of the runs done, naming this once, not as a failure of each run."""


def _on_worker(raw: bytes, stop_event: str, topic: str) -> bytes:
    """A run on this worker's host (see the module's text); the encoded Done."""
    w = distributed.get_worker()
    name = str(w.name)
    task = ex.decode_task(raw)
    # ("name": the scheduler overwrites a "worker" key with the worker's address)
    w.log_event(topic, {"run_id": task.run_id, "index": task.index, "name": name,
                        "host": socket.gethostname()})
    stop = Event(stop_event)
    last = [time.monotonic()]

    def on_sample(_t: float) -> None:
        now = time.monotonic()
        if now - last[0] >= POLL_STOP_S:
            last[0] = now
            if stop.is_set():
                raise Cancelled("the load test was interrupted")

    # in the worker's own directory: should the worker be killed, Dask removes it as stale
    # when the next worker starts on this host
    with tempfile.TemporaryDirectory(prefix="sweeperd_ltrun", dir=w.local_directory) as d:
        done = ex.execute(task, Path(d) / task.run_id, on_sample, worker=name,
                          send_files=True)
    return ex.encode(done)


def _env(key: str) -> str:
    return "DASK_" + key.upper().replace(".", "__").replace("-", "_")


def _address(host: str, port: int) -> tuple[str, bool]:
    """(the scheduler's comm address, TLS?); :class:`ExecutorError` if the host does not
    resolve, or TLS is needed and not configured (a setting missing, or naming no file)."""
    name = f"--executor dask://{ex.host_port(host, port)}"
    if not ex.resolves(host):
        raise ex.ExecutorError(f"{name}: the host {host!r} does not resolve")
    if ex.is_loopback(host):
        return f"tcp://{ex.host_port(host, port)}", False
    missing = [k for k in TLS_KEYS if not dask.config.get(k, None)]
    if missing:
        raise ex.ExecutorError(
            f"{name}: {host} is not a loopback address, so the scheduler is reached over TLS "
            f"only, and Dask's {', '.join(missing)} (or {', '.join(map(_env, missing))}) "
            "are not set (README \"Running the matrix on many hosts\")")
    for k in (*TLS_KEYS, "distributed.comm.tls.client.key"):
        path = dask.config.get(k, None)
        if path and not os.access(str(path), os.R_OK):
            raise ex.ExecutorError(f"{name}: Dask's {k} = {path}: not a file this user can "
                                   "read")
    return f"tls://{ex.host_port(host, port)}", True


def _probe(host: str, port: int, name: str) -> None:
    """Fail at once, by name, when nothing listens there (Dask's client would retry for its
    whole timeout)."""
    try:
        socket.create_connection((host, port), timeout=CONNECT_S).close()
    except OSError as e:
        raise ex.ExecutorError(f"--executor {name}: no Dask scheduler answers at "
                               f"{ex.host_port(host, port)}: {e.strerror or e}") from None


class DaskExecutor:
    """The runs as tasks of the Dask scheduler at ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.name = f"dask://{ex.host_port(host, port)}"
        self.address, self.tls = _address(host, port)
        _probe(host, port, self.name)
        try:
            # (TLS: Client takes Dask's distributed.comm.tls.* settings itself)
            self.client = Client(self.address, timeout=f"{CONNECT_S:g}s",
                                 set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise ex.ExecutorError(f"--executor {self.name}: cannot reach the Dask scheduler "
                                   f"at {self.address}: {e}") from None
        try:
            self._wait_for_a_worker()
        except BaseException:
            self.close()
            raise

    def _offering(self) -> dict[str, dict[str, Any]]:
        """The workers offering RESOURCE: address -> the scheduler's record of it."""
        return {a: w for a, w in self.client.scheduler_info().get("workers", {}).items()
                if w.get("resources", {}).get(RESOURCE, 0) >= 1}

    def _hosts(self) -> list[str]:
        return list(self._offering())

    def shared_hosts(self) -> dict[str, list[str]]:
        """Hosts where more than one worker offers sweeperd_host (their runs share the
        host's cores: one run per host is only true with one such worker per host)."""
        by_host: dict[str, list[str]] = {}
        for a, w in self._offering().items():
            by_host.setdefault(str(w.get("host", a)), []).append(str(w.get("name", a)))
        return {h: sorted(ns) for h, ns in by_host.items() if len(ns) > 1}

    def _wait_for_a_worker(self) -> None:
        end = time.monotonic() + FIRST_WORKER_S
        while not self._hosts():
            if time.monotonic() > end:
                raise ex.ExecutorError(
                    f"--executor {self.name}: no worker offers {RESOURCE} after "
                    f"{FIRST_WORKER_S:g} s; start one on each host: dask worker "
                    f"{self.address} --nthreads 1 --resources {RESOURCE}=1")
            time.sleep(0.5)

    def carry_out(self, tasks: list[ex.Task], out: OutDir, events: ex.Events
                  ) -> Iterator[ex.Done]:
        for host, names in self.shared_hosts().items():
            events.note(f"workers {', '.join(names)} share the host {host}: their runs will "
                        "run at once there, sharing its cores (one worker per host offering "
                        f"{RESOURCE} keeps runs apart)")
        token = secrets.token_hex(6)
        topic, stop_name = f"sweeperd-started-{token}", f"sweeperd-stop-{token}"
        started: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.client.subscribe_topic(topic, lambda ev: started.put(ev[1]))
        stop = Event(stop_name, client=self.client)
        by_key: dict[Any, ex.Task] = {}
        futures: list[Future] = []
        for t in tasks:
            f = self.client.submit(_on_worker, ex.encode(t), stop_name, topic,
                                   key=f"sweeperd-run-{t.run_id}-{token}", pure=False,
                                   resources={RESOURCE: 1}, retries=0)
            by_key[f.key] = t
            futures.append(f)
        starts: dict[str, list[dict[str, Any]]] = {}
        pending = set(futures)
        workerless_since: float | None = None
        yielded = 0
        with _HeldSignals() as held:
            try:
                while pending:
                    held.act()
                    self._drain(started, starts, events)
                    finished = [f for f in futures if f in pending and f.done()]  # (plan order)
                    if not finished:
                        time.sleep(WAIT_S)
                    for f in finished:
                        pending.discard(f)
                        self._drain(started, starts, events)
                        done = self._result(f, by_key[f.key], starts)
                        events.finished(done)
                        yielded += 1
                        yield done
                    if pending and not finished:
                        if self._hosts():
                            workerless_since = None
                        elif workerless_since is None:
                            workerless_since = time.monotonic()
                        elif time.monotonic() - workerless_since > NO_WORKER_S:
                            for f in list(pending):
                                pending.discard(f)
                                f.cancel()
                                done = ex.failed(by_key[f.key],
                                                 f"no worker offering {RESOURCE} for "
                                                 f"{NO_WORKER_S:g} s", attempts=0)
                                events.finished(done)
                                yielded += 1
                                yield done
                held.act()  # (a signal that came while the last run was handed over)
            except SchedulerLost as e:
                raise SchedulerLost(f"{e} at {self.address}; {len(tasks) - yielded} of "
                                    f"{len(tasks)} runs not done") from None
            except BaseException:  # Ctrl-C, SIGTERM, the consumer gone: stop what runs
                if not self._stop(stop, list(pending)):
                    events.note(f"the Dask scheduler at {self.address} did not take the stop "
                                f"in {STOP_S:g} s: runs under way end on their own")
                raise
            finally:
                with contextlib.suppress(Exception):
                    self.client.unsubscribe_topic(topic)

    def _stop(self, stop: Event, pending: list[Future]) -> bool:
        """Tell the running tasks to stop (the Event they poll) and cancel the rest, in
        :data:`STOP_S` at most (on a thread: Dask's synchronous calls take no deadline);
        whether it was done in time."""
        def tell() -> None:
            with contextlib.suppress(Exception):
                stop.set()
            with contextlib.suppress(Exception):
                self.client.cancel(pending)

        t = threading.Thread(target=tell, name="sweeperd-dask-stop", daemon=True)
        t.start()
        t.join(STOP_S)
        return not t.is_alive()

    @staticmethod
    def _drain(started: queue.SimpleQueue[dict[str, Any]],
               starts: dict[str, list[dict[str, Any]]], events: ex.Events) -> None:
        while True:
            try:
                ev = started.get_nowait()
            except queue.Empty:
                return
            if not isinstance(ev, dict) or not isinstance(ev.get("run_id"), str):
                continue
            starts.setdefault(ev["run_id"], []).append(ev)
            if isinstance(ev.get("index"), int):
                events.started(ev["index"], f"{ev.get('host')}/{ev.get('name')}")

    @staticmethod
    def _result(f: Future, task: ex.Task, starts: dict[str, list[dict[str, Any]]]) -> ex.Done:
        tried = starts.get(task.run_id, [])
        last = tried[-1] if tried else {}
        try:
            raw = f.result()
            if not isinstance(raw, bytes):
                raise ValueError(f"a result of type {type(raw).__name__}, not bytes")
            done = ex.decode_done(raw, task)
        except distributed.scheduler.KilledWorker as e:
            return ex.failed(task, f"KilledWorker: its worker died "
                             f"{dask.config.get('distributed.scheduler.allowed-failures')} "
                             f"times or more running it ({e})", str(last.get("name", "")),
                             str(last.get("host", "")), attempts=len(tried))
        except FutureCancelledError as e:
            if e.reason == "scheduler-connection-lost":
                raise SchedulerLost("lost the connection to the Dask scheduler") from None
            return ex.failed(task, f"cancelled by the cluster: {e.reason}",
                             str(last.get("name", "")), str(last.get("host", "")),
                             attempts=len(tried))
        except Exception as e:  # the task raised (a worker without sweeperd...)
            return ex.failed(task, f"{type(e).__name__}: {e}", str(last.get("name", "")),
                             str(last.get("host", "")), attempts=len(tried))
        done.attempts = max(1, len(tried))
        return done

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close(timeout=10)
