"""Alerts (`tuneplan/services/notify.py`) against a local HTTP server on 127.0.0.1: the two
payload styles, a dead endpoint, the user config, and the watcher's rules read from a run
directory's files."""

from __future__ import annotations

import json
import os
import time

import pytest

from http.server import BaseHTTPRequestHandler

from tests.local_http import LoopbackServer, Recorder
from tuneplan.config import ConfigError, NotifyConfig, RunConfig, ModelConfig, DataConfig, save_config
from tuneplan.events import (
    EnvironmentEvent, EvalEvent, LogEvent, PhaseEvent, Status, append_event, write_status,
)
from tuneplan.run_process import process_record
from tuneplan.services import notify, paths


def _alert(kind="done"):
    return notify.Alert(kind=kind, run="r1", title="tuneplan: r1 done", text="loss 5.6 -> 2.2\nadapter: /x",
                        details={"steps": 3})


def test_webhook_gets_json_and_ntfy_gets_plain_text():
    with Recorder() as hook:
        n = notify.Notifier(hook.url + "/hook")
        n.send(_alert())
        n.close()
        (method, path, headers, body), = hook.requests
        data = json.loads(body)
        assert (method, path, headers["Content-Type"]) == ("POST", "/hook", "application/json")
        assert data["event"] == "done" and data["run"] == "r1" and data["details"] == {"steps": 3}
        assert data["text"].startswith("tuneplan: r1 done\n") and "adapter: /x" in data["text"]
        hook.requests.clear()
        n = notify.Notifier("ntfy+" + hook.url + "/mytopic")
        n.send(_alert("crashed"))
        n.close()
        (method, path, headers, body), = hook.requests
        assert path == "/mytopic" and body.decode() == "loss 5.6 -> 2.2\nadapter: /x"
        assert headers["Title"] == "tuneplan: r1 done" and headers["Priority"] == "high"
        assert "crashed" in headers["Tags"]
    assert notify.is_ntfy("https://ntfy.sh/abc") and not notify.is_ntfy("https://hooks.slack.com/x")


def test_a_dead_endpoint_never_blocks_and_is_logged(tmp_path, capsys):
    (tmp_path / "events.jsonl").touch()
    with Recorder(delay=3.0) as slow:  # accepts, answers after the timeout
        n = notify.Notifier(slow.url, run_dir=tmp_path, timeout=0.5)
        t0 = time.monotonic()
        for _ in range(3):
            n.send(_alert())
        assert time.monotonic() - t0 < 0.05  # the caller never waits
        n.close(wait=5)
    dead = notify.Notifier("http://127.0.0.1:9/nothing", run_dir=tmp_path, timeout=0.5)  # port 9: refused
    dead.send(_alert("failed"))
    dead.close(wait=5)
    out = capsys.readouterr().out
    assert out.count("alert done to 127.0.0.1 failed") == 3 and "alert failed to 127.0.0.1 failed" in out
    warnings = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len(warnings) == 4 and all(w["kind"] == "message" and w["level"] == "warning" for w in warnings)
    assert "/nothing" not in out  # only the host is named (a webhook URL can hold a secret)


def test_user_config_supplies_the_url(tmp_path, monkeypatch):
    cfg = tmp_path / "config.toml"
    monkeypatch.setenv(paths.USER_CONFIG_ENV, str(cfg))
    run = RunConfig(model=ModelConfig(source="m"), data=DataConfig(source="d.jsonl"))
    assert notify.with_user_default(run).notify.url is None  # no file: no alerts
    cfg.write_text('[notify]\nurl = "https://ntfy.sh/my-runs"\nstall_minutes = 20\n')
    assert notify.with_user_default(run).notify == NotifyConfig(url="https://ntfy.sh/my-runs", stall_minutes=20)
    from dataclasses import replace

    off = replace(run, notify=NotifyConfig(url=""))  # `--notify off`
    assert notify.with_user_default(off).notify.url == ""
    cfg.write_text('[notify]\nurl = "ftp://x"\n')
    with pytest.raises(ConfigError, match="notify.url must be an http"):
        notify.with_user_default(run)
    cfg.write_text('[notfy]\nurl = "https://x"\n')
    with pytest.raises(ConfigError, match="unknown table notfy"):
        notify.with_user_default(run)


def _run_dir(tmp_path):
    run = RunConfig(model=ModelConfig(source="m"), data=DataConfig(source="d.jsonl"), name="r1")
    save_config(run, tmp_path / "config.toml")
    me = os.getpid()  # a live process recorded as the run's (pid, start time, command line)
    write_status(tmp_path, Status(phase="training", pids=[me], processes=[process_record(me)], run_name="r1"))
    append_event(tmp_path, PhaseEvent(phase="queued"))
    return tmp_path


def test_watcher_rules_exploding_stall_and_resume(tmp_path):
    run_dir = _run_dir(tmp_path)
    now = [0.0]

    class Sink:
        def __init__(self):
            self.alerts = []

        def send(self, alert):
            self.alerts.append(alert)

        def close(self, wait=0):
            pass

    sink = Sink()
    w = notify.RunWatcher(run_dir, sink, stall_seconds=60, clock=lambda: now[0])
    w.quiet = False
    for step, loss in ((1, 2.0), (2, 1.8), (3, 7.0), (4, 8.0)):
        append_event(run_dir, LogEvent(step=step, loss=loss))
    w.poll()
    assert [a.kind for a in sink.alerts] == ["exploding"]  # once, at step 3
    now[0] = 59.0
    w.poll()
    now[0] = 61.0
    w.poll()
    w.poll()
    assert [a.kind for a in sink.alerts] == ["exploding", "stalled"]
    append_event(run_dir, LogEvent(step=5, loss=1.5))
    now[0] = 100.0
    w.poll()
    now[0] = 170.0
    w.poll()  # a new step re-armed it: a second stall is a second alert
    assert [a.kind for a in sink.alerts] == ["exploding", "stalled", "stalled"]
    # a resumed run's supervisor takes in the old events without alerting again
    sink2 = Sink()
    notify.RunWatcher(run_dir, sink2, stall_seconds=60).start()._stop.set()
    assert sink2.alerts == []


@pytest.mark.parametrize("phase,error,expect", [
    ("failed", "at step 3: ValueError: bad (see train.log)", "at step 3: ValueError: bad"),
    ("stopped", None, "last checkpoint checkpoint-2. Continue with `tuneplan resume "),
])
def test_final_alerts_for_failed_and_stopped(tmp_path, phase, error, expect):
    run_dir = _run_dir(tmp_path)
    write_status(run_dir, Status(phase=phase, pids=[], run_name="r1", step=3, error=error,
                                 last_checkpoint=str(run_dir / "checkpoints" / "checkpoint-2"),
                                 log_tail=["Traceback ...", "ValueError: bad"] if error else []))
    with Recorder() as hook:
        w = notify.RunWatcher(run_dir, notify.Notifier(hook.url), stall_seconds=60).start()
        w.finish()
    (_, _, _, body), = hook.requests
    data = json.loads(body)
    assert data["event"] == phase and expect in data["text"]
    if error:
        assert "ValueError: bad" in data["text"].splitlines()[-1]  # the log's last line


def test_done_summary_prices_the_card_the_run_trained_on(tmp_path):
    from planner.gpus import match_nvml

    run = RunConfig(model=ModelConfig(source="m"), data=DataConfig(source="d.jsonl"), name="r1")
    from dataclasses import replace

    run = replace(run, setup=replace(run.setup, num_gpus=2, strategy="ddp"))
    save_config(run, tmp_path / "config.toml")
    t0 = 1_800_000_000.0
    append_event(tmp_path, PhaseEvent(phase="queued", time=t0))
    append_event(tmp_path, EnvironmentEvent(device="cuda", gpu_name="NVIDIA H100 80GB HBM3",
                                            gpu_memory_bytes=85520809984))
    for step in range(1, 11):
        append_event(tmp_path, LogEvent(step=step, loss=3.0 - step / 10, tokens_per_second=1000.0 + step))
    append_event(tmp_path, EvalEvent(step=10, eval_loss=2.5))
    status = Status(phase="done", step=10, run_name="r1")
    write_status(tmp_path, status)
    status.updated_at = t0 + 5400  # 1.5 h
    w = notify.RunWatcher(tmp_path, notify.Notifier("http://127.0.0.1:9"), stall_seconds=60)
    w.quiet = True
    w.poll()
    text, details = w.summary(status)
    price = match_nvml("NVIDIA H100 80GB HBM3", 85520809984).price_per_hour
    assert details["cost_usd"] == pytest.approx(1.5 * price * 2)
    assert f"${1.5 * price * 2:,.2f} (2 x " in text and "1h30m" in text
    assert text.splitlines()[0] == "loss 2.900 -> 2.700 -> 2.500 -> 2.400 -> 2.200 -> 2.000 (steps 1, 3, 5, 6, 8, 10; min 2.000)"
    assert "eval loss 2.5000 at step 10" in text and "1006 tokens/s (median)" in text
    assert details["loss_curve"][-1] == [10, 2.0] and details["final_loss"] == 2.0


# --- issue 19, item 5: URLs checked part by part; bounded answers; a total deadline; every lost
# alert logged -------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, word", [
    ("http:///hook", "no host"), ("http://h:0/hook", "port 0"), ("http://h:99999/hook", "out of range"),
    ("http://h/hook\r\nX-Injected: 1", "line breaks"), ("http://h/a b", "spaces"),
    ("http://user:secret@h/hook", "password"), ("ftp://h/x", "http"), ("http://h:abc/x", "valid URL"),
])
def test_notify_urls_the_parser_would_take_are_refused_in_one_line(url, word, tmp_path, capsys, monkeypatch):
    from tuneplan.cli import main
    from tuneplan.data import SAMPLE_CHAT

    monkeypatch.setenv("TUNEPLAN_FAKE_FREE_BYTES", "1")  # never launch
    code = main(["train", "--model", "tuneplan:tiny", "--dataset", str(SAMPLE_CHAT), "--runs-dir",
                 str(tmp_path / "runs"), "--notify", url])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "notify.url" in lines[0] and word in lines[0], err
    assert "secret" not in err  # a password is never echoed
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


class _Endless(LoopbackServer):
    """Answers 200 with a 1 GiB body, sent as fast as the client takes it (`trickle`: one byte
    every `trickle` seconds, forever)."""

    def __init__(self, trickle: float | None = None):
        self.written = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", str(1 << 30))
                    self.end_headers()
                    block = b"x" if trickle else b"\0" * (1 << 20)
                    while server.written < (1 << 30):
                        self.wfile.write(block)
                        self.wfile.flush()
                        server.written += len(block)
                        if trickle:
                            time.sleep(trickle)
                except OSError:  # the client hung up
                    pass

            def log_message(self, *args):
                pass

        self.serve(Handler)


def test_a_huge_answer_is_read_only_as_far_as_the_cap(tmp_path):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with _Endless() as big:
        n = notify.Notifier(big.url, run_dir=tmp_path, timeout=2)
        n.send(_alert())
        n.close(wait=20)
    assert n.sent == ["done"]
    grew_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grew_kib < 100 * 1024, grew_kib  # the body is 1 GiB


def test_a_trickling_server_times_out_as_a_whole_and_the_lost_alert_is_logged(tmp_path, capsys, monkeypatch):
    (tmp_path / "events.jsonl").touch()
    monkeypatch.setattr(notify, "SEND_DEADLINE_SECONDS", 1.5)
    with _Endless(trickle=0.2) as slow:  # every read gets a byte within the 2 s per-read timeout
        n = notify.Notifier(slow.url, run_dir=tmp_path, timeout=2)
        t0 = time.monotonic()
        n.send(_alert("done"))
        n.close(wait=10)
        took = time.monotonic() - t0
    assert n.sent == [] and took < 6, took
    logged = [json.loads(line)["text"] for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert logged == ["alert done to 127.0.0.1 failed: TimeoutError: no complete answer within 2 s"]
    # alerts the supervisor cannot wait for are logged too, not dropped in silence
    monkeypatch.setattr(notify, "SEND_DEADLINE_SECONDS", 30)
    with _Endless(trickle=0.2) as slow:
        n = notify.Notifier(slow.url, run_dir=tmp_path, timeout=2)
        n.send(_alert("stopped"))
        n.send(_alert("done"))
        n.close(wait=1)
    logged = [json.loads(line)["text"] for line in (tmp_path / "events.jsonl").read_text().splitlines()][1:]
    assert [t.split(" failed")[0] for t in logged] == ["alert stopped to 127.0.0.1", "alert done to 127.0.0.1"]
    assert all("not sent within 1 s" in t for t in logged)
