"""Alerts for unattended runs: a webhook (JSON POST) or an ntfy-style topic (plain text).

The run's supervisor (`tuneplan/training/runner.py`), the process that outlives every training
worker, runs a `RunWatcher` thread: it tails `events.jsonl` and `status.json` and sends

- `nan`: the first logged loss (or gradient norm) that is NaN or infinite;
- `exploding`: the first logged loss above `EXPLODING_FACTOR` x the first logged loss;
- `replan`: every out-of-memory re-plan (the supervisor's `replan` events);
- `stalled`: no new optimizer step for `notify.stall_minutes` while training (once per stall;
  a new step re-arms it);
- at the end (`RunWatcher.finish`, called by the supervisor once the worker has exited, also
  after a kill -9 of the worker): `done` with a one-screen summary (loss curve, time, cost,
  where the adapter is), `failed` / `crashed` with the error and the log's last lines, or
  `stopped` (a `tuneplan stop`, or a SIGTERM from outside such as a spot preemption).
The supervisor itself killed with SIGKILL cannot report anything.

Alerts are sent by one background thread (`Notifier`) with a timeout per request, so a dead or
slow endpoint never slows the supervisor's loop, let alone training (another process). A
failed send is printed to `train.log` and written as a `message` event; only the URL's host
is named (a webhook URL can hold a secret). No torch here.

Where the URL comes from: `--notify URL` on `tuneplan train` (`notify.url` in a run config),
else the user config file (`paths.user_config_file()`, `[notify] url = ...`, `stall_minutes = ...`).
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tuneplan.config import NotifyConfig, RunConfig, load_config
from tuneplan.events import (
    ADAPTER_DIR, CONFIG_FILE, MODEL_DIR, EnvironmentEvent, EvalEvent, Event, EventTail, LogEvent, MessageEvent,
    PhaseEvent, ReplanEvent, append_event, created_at, effective_phase, read_status,
)
from tuneplan.services.paths import user_config_file
SEND_TIMEOUT_SECONDS = 5.0
"""Per socket operation (connect, each read): a dead endpoint fails this fast."""
SEND_DEADLINE_SECONDS = 10.0
"""Per alert, in all: a server that trickles its answer a byte at a time resets the per-read
timeout forever, so the connection is shut down at this deadline whatever it is doing."""
RESPONSE_MAX_BYTES = 64 << 10
"""Of the endpoint's answer at most this much is read (nothing in it is used; a 1 GiB body must
not grow the supervisor)."""
FINISH_WAIT_SECONDS = 15.0
"""At the run's end the supervisor waits this long at most for the queued alerts to go out."""
POLL_SECONDS = 1.0
EXPLODING_FACTOR = 3.0
"""A logged loss this many times the first one is `exploding`. A heuristic of ours: a
fine-tune's loss falls from its first value; three times it means divergence, not noise."""
CURVE_POINTS = 6
"""Loss values in the done summary (evenly spaced over the logged steps, first and last kept)."""


def user_notify() -> NotifyConfig:
    """The `[notify]` table of the user config file (defaults when there is none)."""
    from tuneplan.config import ConfigError, read_toml_text, section_from_table, where_in

    path = user_config_file()
    if not path.is_file():
        return NotifyConfig()
    data, text = read_toml_text(path)
    unknown = set(data) - {"notify"}
    if unknown:
        raise ConfigError(f"{path}: unknown table {sorted(unknown)[0]}; known: notify")
    return section_from_table(NotifyConfig, data.get("notify", {}), "notify",
                              lambda key: where_in(str(path), text, "notify", key))


def with_user_default(config: RunConfig) -> RunConfig:
    """The run config with the user config's alert URL when the run names none (`None`;
    an empty URL means alerts off for this run)."""
    if config.notify.url is not None:
        return config
    user = user_notify()
    if not user.url:
        return config
    # a stall limit the run sets itself wins over the user config's
    own = config.notify.stall_minutes != NotifyConfig.stall_minutes
    stall = config.notify.stall_minutes if own else user.stall_minutes
    return replace(config, notify=NotifyConfig(url=user.url, stall_minutes=stall)).validate()


def is_ntfy(url: str) -> bool:
    """ntfy-style topic URLs (plain-text body, `Title` header): ntfy.sh or a host named ntfy.*
    (https://docs.ntfy.sh/publish/), or any URL given as `ntfy+https://...`."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme.startswith("ntfy+") or host == "ntfy.sh" or host.startswith("ntfy.")


@dataclass(frozen=True)
class Alert:
    kind: str
    """done, failed, crashed, stopped, stalled, nan, exploding, replan"""
    run: str
    title: str
    text: str
    """Plain text: the one-screen message."""
    details: dict[str, Any]


class Notifier:
    """Sends alerts from one daemon thread; `send` never blocks the caller."""

    def __init__(self, url: str, *, run_dir: Path | None = None, timeout: float = SEND_TIMEOUT_SECONDS):
        self.url = url
        self.run_dir = run_dir
        self.timeout = timeout
        self.sent: list[str] = []
        self._queue: queue.Queue[Alert | None] = queue.Queue()
        self._sending: Alert | None = None
        self._thread = threading.Thread(target=self._loop, name="tuneplan-notify", daemon=True)
        self._thread.start()

    def send(self, alert: Alert) -> None:
        self._queue.put(alert)

    def close(self, wait: float = FINISH_WAIT_SECONDS) -> None:
        """Send what is queued, waiting at most `wait` seconds; every alert that did not go out
        by then is logged in the run as undelivered."""
        self._queue.put(None)
        self._thread.join(wait)
        if self._thread.is_alive():
            left = [self._sending] if self._sending is not None else []
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    left.append(item)
            for alert in left:
                self._undelivered(alert, f"not sent within {wait:.0f} s before the supervisor exited")

    def _undelivered(self, alert: Alert, why: str) -> None:
        """Say in train.log and in the run's events that an alert did not arrive (only the URL's
        host is named: a webhook URL can hold a secret)."""
        host = urlsplit(self.url).hostname or "?"
        text = f"alert {alert.kind} to {host} failed: {why}".splitlines()[0]
        print(f"tuneplan: {text}", flush=True)
        if self.run_dir is not None:
            try:
                append_event(self.run_dir, MessageEvent(level="warning", text=text))
            except OSError:
                pass

    def _post(self, alert: Alert) -> None:
        """One request with a total deadline (`SEND_DEADLINE_SECONDS`) and a bounded read."""
        import socket

        sockets: list[socket.socket] = []

        def shut() -> None:
            for sock in sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a recv blocked in another thread
                except OSError:
                    pass

        timer = threading.Timer(SEND_DEADLINE_SECONDS, shut)
        timer.daemon = True
        timer.start()
        start = time.monotonic()
        try:
            with _opener(sockets).open(self._request(alert), timeout=self.timeout) as resp:
                got = 0
                while got < RESPONSE_MAX_BYTES and time.monotonic() - start < SEND_DEADLINE_SECONDS:
                    chunk = resp.read1(RESPONSE_MAX_BYTES - got)
                    if not chunk:
                        break  # the whole answer (nothing in it is used; enough of it is enough)
                    got += len(chunk)
        except OSError:
            if time.monotonic() - start >= SEND_DEADLINE_SECONDS:
                raise TimeoutError(f"no complete answer within {SEND_DEADLINE_SECONDS:.0f} s") from None
            raise
        finally:
            timer.cancel()
        if time.monotonic() - start >= SEND_DEADLINE_SECONDS:
            raise TimeoutError(f"no complete answer within {SEND_DEADLINE_SECONDS:.0f} s")

    def _request(self, alert: Alert) -> urllib.request.Request:
        if is_ntfy(self.url):
            url = self.url.split("+", 1)[1] if urlsplit(self.url).scheme.startswith("ntfy+") else self.url
            headers = {"Title": alert.title.encode("ascii", "replace").decode("ascii"), "Tags": f"tuneplan,{alert.kind}",
                       "Content-Type": "text/plain; charset=utf-8",
                       "Priority": "high" if alert.kind in ("failed", "crashed", "nan", "exploding") else "default"}
            return urllib.request.Request(url, data=alert.text.encode("utf-8"), headers=headers, method="POST")
        body = {"event": alert.kind, "run": alert.run, "title": alert.title,
                # `text` is what Slack, Mattermost and Google Chat webhooks display
                "text": f"{alert.title}\n{alert.text}", "details": alert.details}
        return urllib.request.Request(self.url, data=json.dumps(body, default=str).encode("utf-8"),
                                      headers={"Content-Type": "application/json"}, method="POST")

    def _loop(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            self._sending = alert
            try:
                self._post(alert)
                self.sent.append(alert.kind)
            except Exception as exc:  # a dead endpoint must never reach the run: log it and go on
                self._undelivered(alert, f"{type(exc).__name__}: {exc}")
            finally:
                self._sending = None


def _opener(sockets: list) -> urllib.request.OpenerDirector:
    """urllib's opener (proxies from the environment as usual) whose HTTP and HTTPS connections
    record their sockets in `sockets`, so a deadline can shut them down."""
    import http.client

    class HTTP(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            sockets.append(self.sock)

    class HTTPS(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            sockets.append(self.sock)

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(HTTP, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(HTTPS, req, context=self._context)

    return urllib.request.build_opener(HTTPHandler, HTTPSHandler)


def _fmt_duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


class RunWatcher:
    """Follows one run from its supervisor and raises the alerts (see the module docstring)."""

    def __init__(self, run_dir: Path, notifier: Notifier, *, stall_seconds: float, clock=time.monotonic):
        self.run_dir = Path(run_dir)
        self.notifier = notifier
        self.stall_seconds = stall_seconds
        self.clock = clock
        self.tail = EventTail(self.run_dir)
        self.losses: list[tuple[int, float]] = []
        self.evals: list[EvalEvent] = []
        self.tokens_per_second: list[float] = []
        self.environment: EnvironmentEvent | None = None
        self.first_loss: float | None = None
        self.nan_sent = self.exploding_sent = self.stall_sent = False
        self.nan_step: int | None = None
        self.last_step: int | None = None
        self.last_progress = clock()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="tuneplan-watch", daemon=True)

    @property
    def name(self) -> str:
        return self.run_dir.name

    def start(self) -> "RunWatcher":
        """Take in the events so far without alerting (a resumed run's old NaN or re-plans were
        reported by the supervisor of their time), then follow the run."""
        self.quiet = True
        self.poll()
        self.quiet = False
        self._thread.start()
        return self

    quiet = False

    def _alert(self, kind: str, title: str, text: str, **details: Any) -> None:
        if self.quiet:
            return
        self.notifier.send(Alert(kind=kind, run=self.name, title=f"tuneplan: {self.name} {title}", text=text,
                                 details={"run_dir": str(self.run_dir), **details}))

    def _loop(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self.poll()

    def poll(self) -> None:
        """Read what is new and raise the alerts it calls for (thread-safe, idempotent)."""
        with self._lock:
            for e in self.tail.read_new():
                self._on_event(e)
            self._check_stall()

    def _on_event(self, e: Event) -> None:
        if isinstance(e, EnvironmentEvent):
            self.environment = e
        elif isinstance(e, EvalEvent) and e.eval_loss is not None:
            self.evals.append(e)
        elif isinstance(e, ReplanEvent):
            self._alert("replan", f"re-planned after running out of memory (attempt {e.attempt})", e.describe(),
                        attempt=e.attempt, changes=e.changes)
        elif isinstance(e, LogEvent):
            self._on_log(e)
        elif isinstance(e, PhaseEvent) and e.phase == "training":
            self.last_progress = self.clock()  # a (re)started attempt: the stall clock starts again

    def _on_log(self, e: LogEvent) -> None:
        step, loss, grad_norm = e.step or 0, e.loss, e.grad_norm
        self._progress(step)
        tps = e.tokens_per_second
        if tps is not None and _finite(tps):
            self.tokens_per_second.append(float(tps))
        # events are strict JSON: a NaN/inf is written as null (None here)
        if loss is None or not _finite(loss) or (grad_norm is not None and not _finite(grad_norm)):
            if not self.nan_sent:
                self.nan_sent, self.nan_step = True, step
                what = (f"loss is {'not finite' if loss is None else loss}" if loss is None or not _finite(loss)
                        else f"gradient norm is {grad_norm}")
                self._alert("nan", f"{what} at step {step}",
                            f"The training {what} at step {step}: the run is no longer learning. "
                            f"Stop it with `tuneplan stop {self.name}` and lower the learning rate.",
                            step=step, loss=str(loss), grad_norm=str(grad_norm))
            return
        # a re-planned or resumed attempt repeats steps after its checkpoint: keep the newest
        self.losses = [(s, v) for s, v in self.losses if s < step]
        self.losses.append((step, loss))
        if self.first_loss is None:
            self.first_loss = loss
        elif loss > EXPLODING_FACTOR * self.first_loss and not self.exploding_sent:
            self.exploding_sent = True
            self._alert("exploding", f"loss exploding at step {step}",
                        f"Loss {loss:.4g} at step {step}, more than {EXPLODING_FACTOR:g}x its first value "
                        f"{self.first_loss:.4g}. Consider `tuneplan stop {self.name}` and a lower learning rate.",
                        step=step, loss=loss, first_loss=self.first_loss)

    def _progress(self, step: int) -> None:
        if step != self.last_step:
            self.last_step = step
            self.last_progress = self.clock()
            self.stall_sent = False  # a new step ends a stall; a later one alerts again

    def _check_stall(self) -> None:
        status = read_status(self.run_dir)
        if status is None or status.phase != "training":
            self.last_progress = self.clock()  # the stall clock runs only while training
            return
        if effective_phase(status) != "training":
            return  # its processes are gone: the supervisor reports the crash
        if status.step != self.last_step and status.step:
            self._progress(status.step)
        idle = self.clock() - self.last_progress
        if idle >= self.stall_seconds and not self.stall_sent:
            self.stall_sent = True
            self._alert("stalled", f"stalled at step {status.step}",
                        f"No optimizer step for {_fmt_duration(idle)} (step {status.step}"
                        f"{f'/{status.max_steps}' if status.max_steps else ''}). The process is alive (pids "
                        f"{', '.join(map(str, status.pids))}); check it with `tuneplan attach {self.name}`.",
                        step=status.step, idle_seconds=round(idle, 1))

    def finish(self) -> None:
        """The worker has exited: read the last events, send the final alert, flush the queue."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(POLL_SECONDS * 3)
        with self._lock:
            for e in self.tail.read_new():
                self._on_event(e)
        status = read_status(self.run_dir)
        phase = effective_phase(status)
        if phase == "done":
            text, details = self.summary(status)
            self._alert("done", "done", text, **details)
        elif phase == "stopped":  # `tuneplan stop`, or a SIGTERM from outside (a spot instance's preemption)
            ckpt = Path(status.last_checkpoint).name if status and status.last_checkpoint else None
            self._alert("stopped", f"stopped at step {status.step if status else 0}",
                        f"The run stopped on a signal at step {status.step if status else 0}"
                        + (f"; last checkpoint {ckpt}. Continue with `tuneplan resume {self.name}`." if ckpt else
                           "; it has no checkpoint yet.") ,
                        step=status.step if status else None, checkpoint=ckpt)
        elif phase in ("failed", "crashed"):
            tail = (status.log_tail if status else [])[-5:]
            text = f"{(status.error if status else None) or phase} (step {status.step if status else 0})"
            if tail:
                text += "\nLast lines of train.log:\n" + "\n".join(tail)
            self._alert(phase, phase, text, error=status.error if status else None,
                        step=status.step if status else None)
        self.notifier.close()

    def summary(self, status) -> tuple[str, dict[str, Any]]:
        """The done message: loss curve numbers, time, cost, where the adapter is."""
        config = load_config(self.run_dir / CONFIG_FILE)
        seconds = max(0.0, (status.updated_at or time.time()) - created_at(self.run_dir))
        lines = []
        curve = self.losses
        if curve:
            n = len(curve)
            idx = sorted({round(i * (n - 1) / (CURVE_POINTS - 1)) for i in range(CURVE_POINTS)}) if n > 1 else [0]
            points = [curve[i] for i in idx]
            lines.append("loss " + " -> ".join(f"{loss:.3f}" for _, loss in points)
                         + f" (steps {', '.join(str(s) for s, _ in points)}; min {min(v for _, v in curve):.3f})")
        if self.nan_step is not None:
            lines.append(f"NaN from step {self.nan_step} on: the steps after it did not learn")
        if self.evals:
            lines.append(self.evals[-1].describe())
        tps = sorted(self.tokens_per_second)
        speed = f", {tps[len(tps) // 2]:.0f} tokens/s (median)" if tps else ""
        lines.append(f"{status.step} steps in {_fmt_duration(seconds)}{speed}")
        cost, where = self._cost(seconds, config)
        lines.append(f"cost: {where}")
        s = config.setup
        out = self.run_dir / (MODEL_DIR if s.method == "full" else ADAPTER_DIR)
        lines.append(f"{'model' if s.method == 'full' else 'adapter'}: {out}")
        lines.append(f"next: tuneplan chat {self.name} | tuneplan export {self.name} --format ollama | "
                     f"tuneplan push {self.name} --repo USER/NAME")
        details = {"steps": status.step, "seconds": round(seconds, 1), "final_loss": curve[-1][1] if curve else None,
                   "first_loss": curve[0][1] if curve else None,
                   "eval_loss": self.evals[-1].eval_loss if self.evals else None,
                   "loss_curve": [[st, v] for st, v in curve[-200:]], "cost_usd": cost, "output": str(out),
                   "tokens_per_second": tps[len(tps) // 2] if tps else None}
        return "\n".join(lines), details

    def _cost(self, seconds: float, config: RunConfig) -> tuple[float | None, str]:
        """GPU-hours x the catalog's price for the card the run trained on (`planner.gpus`)."""
        env = self.environment
        gpu_name = env.gpu_name if env is not None else None
        if env is None or not gpu_name or gpu_name == "cpu":
            return None, "none (trained on the CPU)"
        from planner.gpus import PRICES_AS_OF, match_nvml

        gpu = match_nvml(gpu_name, env.gpu_memory_bytes)
        if gpu is None or gpu.price_per_hour is None:
            return None, f"unknown (no catalog price for {gpu_name})"
        n = config.setup.num_gpus
        usd = seconds / 3600 * gpu.price_per_hour * n
        return usd, (f"${usd:,.2f} ({n} x {gpu.name} at ${gpu.price_per_hour:.2f}/GPU-hour, "
                     f"typical on-demand price as of {PRICES_AS_OF})")


def start_watcher(run_dir: Path) -> RunWatcher | None:
    """A started watcher for the run when its config names an alert URL (else None)."""
    try:
        config = load_config(Path(run_dir) / CONFIG_FILE)
    except Exception:  # a bad config: the worker reports it; nothing to alert to
        return None
    if not config.notify.url:
        return None
    notifier = Notifier(config.notify.url, run_dir=Path(run_dir))
    return RunWatcher(run_dir, notifier, stall_seconds=config.notify.stall_minutes * 60).start()
