"""UI benchmark: prints figures, asserts nothing.

    python bench/bench_ui.py [--seconds 20]

1. Time from `tuneplan` start to the first screen painted, in a real terminal (tmux, 80x24),
   and whether the UI process imported torch (target: under 1 s, never).
2. Estimate latency while editing a knob: one planning-service estimate (8B and 70B), a
   keypress's handler in the plan screen (headless), and a digit typed into the sequence
   length in a real terminal until the re-estimated plan is on screen.
3. The dashboard's CPU use (share of one core) while following a run that logs every step
   at 10 steps/s, with a short history and with 100k steps already in `events.jsonl`
   (target: under 5%, and not growing with run length).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLK = os.sysconf("SC_CLK_TCK")


def _tmux(sock: str, *args: str, env=None) -> str:
    return subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True, env=env).stdout


def _pane_pid(sock: str) -> int:
    return int(_tmux(sock, "display-message", "-p", "-t", "b", "#{pane_pid}").strip())


def _wait_screen(sock: str, text: str, timeout: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if text in _tmux(sock, "capture-pane", "-p", "-t", "b"):
            return time.perf_counter()
        time.sleep(0.005)
    raise RuntimeError(f"{text!r} never appeared")


def first_paint(runs: int = 3) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color"}
    times = []
    for i in range(runs):
        sock = f"bench-ui-{os.getpid()}-{i}"
        t0 = time.perf_counter()
        _tmux(sock, "new-session", "-d", "-s", "b", "-x", "80", "-y", "24",
              f"{sys.executable} -m tuneplan", env=env)
        try:
            t1 = _wait_screen(sock, "1 Hardware", 20)
            times.append(t1 - t0)
        finally:
            _tmux(sock, "kill-server")
    print(f"first paint (tmux 80x24, `python -m tuneplan`): median {statistics.median(times):.2f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in times)}; target < 1 s)")
    probe = (
        "import asyncio, sys\n"
        "from tuneplan.ui.app import create_app\n"
        "async def main():\n"
        "    app = create_app()\n"
        "    async with app.run_test(size=(80, 24)) as pilot:\n"
        "        await pilot.pause(0.5)\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'peft', 'trl') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT)
    print(f"heavy modules imported by the UI process: {out.stdout.strip() or out.stderr.strip()[-200:]}")


def estimate_latency() -> None:
    from dataclasses import replace

    from tuneplan.ui.adapters import ModelsAdapter, PlanningAdapter
    from tuneplan.ui.target import dry_run_target

    planning = PlanningAdapter()
    for name, card in (("llama-3.1-8b", "rtx-3060-12gb"), ("llama-3.1-70b", "a100-80gb")):
        model, target = ModelsAdapter().resolve(name), dry_run_target(card)
        t0 = time.perf_counter()
        plan = planning.plan(model, target, None, {})
        solve = time.perf_counter() - t0
        samples = []
        for seq in range(512, 512 + 200 * 16, 16):
            t0 = time.perf_counter()
            planning.estimate(model, target, None, replace(plan.setup, seq_len=seq))
            samples.append(time.perf_counter() - t0)
        print(f"{name} on {card}: solver {solve * 1e3:.0f} ms; one estimate median "
              f"{statistics.median(samples) * 1e3:.2f} ms, p99 {sorted(samples)[int(0.99 * len(samples))] * 1e3:.2f} ms")

    async def keypress() -> list[float]:
        sys.path.insert(0, str(ROOT / "tests" / "tuneplan" / "ui"))
        from ui_helpers import make_services, wait_for

        from tuneplan.ui.app import create_app
        from tuneplan.ui.screens.plan_screen import PlanScreen

        tmp = Path(tempfile.mkdtemp())
        app = create_app(make_services(tmp))
        out = []
        async with app.run_test(size=(80, 24)) as pilot:
            await app.push_screen(PlanScreen(dry_run_target("rtx-3060-12gb"),
                                             ModelsAdapter().resolve("llama-3.1-8b"), None))
            screen = app.screen
            await wait_for(pilot, lambda: screen.plan is not None)
            field = screen.query_one("#seq_len")
            field.focus()
            field.value = "1"
            await pilot.press("end")  # drop the select-on-focus selection: digits append
            await pilot.pause()
            handler = []
            edit = screen._edit

            def timed_edit(**changes):  # the work a keypress does: estimate + redraw of the numbers
                t0 = time.perf_counter()
                edit(**changes)
                handler.append(time.perf_counter() - t0)

            screen._edit = timed_edit
            for digit in "0240000":
                before = screen.plan
                t0 = time.perf_counter()
                await pilot.press(digit)
                await wait_for(pilot, lambda: screen.plan is not before, timeout=5)
                out.append(time.perf_counter() - t0)
            out.append(handler)
        shutil.rmtree(tmp, ignore_errors=True)
        return out

    lat = asyncio.run(keypress())
    handler = lat.pop()
    print(f"keypress in the plan screen: handler (estimate + widget updates) median "
          f"{statistics.median(handler) * 1e3:.1f} ms, max {max(handler) * 1e3:.1f} ms; "
          f"key to new plan through the test pilot median {statistics.median(lat) * 1e3:.0f} ms "
          f"(includes the pilot's own settling wait)")


def keypress_in_terminal() -> None:
    """A real terminal: each digit typed into the sequence length until the screen shows
    the re-estimated plan (tmux polled every 5 ms)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color"}
    sock = f"bench-keys-{os.getpid()}"
    _tmux(sock, "new-session", "-d", "-s", "b", "-x", "80", "-y", "24", f"{sys.executable} -m tuneplan", env=env)
    try:
        _wait_screen(sock, "Dry run", 20)
        for keys, wait in (("rtx-3060-12gb", "[2 Model]"), ("llama-3.1-8b", "Enter again")):
            _tmux(sock, "send-keys", "-t", "b", "-l", keys)
            _tmux(sock, "send-keys", "-t", "b", "Enter")
            _wait_screen(sock, wait, 20)
        _tmux(sock, "send-keys", "-t", "b", "Enter")
        _wait_screen(sock, "[3 Dataset]", 20)
        _tmux(sock, "send-keys", "-t", "b", "C-s")
        _wait_screen(sock, "FITS", 20)
        _tmux(sock, "send-keys", "-t", "b", "Tab")
        _wait_screen(sock, "> sequence length", 20)
        _tmux(sock, "send-keys", "-t", "b", "-l", "1")
        _wait_screen(sock, "batch 16 x 1 =", 20)
        lat, seq = [], "1"
        for digit in "024000":
            seq += digit
            t0 = time.perf_counter()
            _tmux(sock, "send-keys", "-t", "b", "-l", digit)
            lat.append(_wait_screen(sock, f"batch 16 x {seq} =", 20) - t0)
    finally:
        _tmux(sock, "kill-server")
    print(f"keypress to repainted estimate in a real terminal (tmux 80x24): median "
          f"{statistics.median(lat) * 1e3:.0f} ms, max {max(lat) * 1e3:.0f} ms (includes tmux round trips)")


def _cpu_seconds(pid: int) -> float:
    total = 0.0
    pids = [pid]
    try:  # the pane's shell runs python as a child: count the whole tree
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK
        except OSError:
            pass
    return total


def dashboard_cpu(seconds: float, history: int) -> None:
    from tuneplan import events as ev

    tmp = Path(tempfile.mkdtemp())
    run_dir = tmp / "bench-run"
    run_dir.mkdir()
    max_steps = history + 100_000
    with open(run_dir / ev.EVENTS_FILE, "w") as f:
        for step in range(1, history + 1):
            f.write(json.dumps({"kind": "log", "time": 0, "step": step, "max_steps": max_steps,
                                "loss": 3.0 / (1 + step / 1000), "learning_rate": 1e-4,
                                "tokens_per_second": 5000.0}) + "\n")
    ev.write_status(run_dir, ev.Status(phase="training", pids=[os.getpid()], max_steps=max_steps))
    stop = threading.Event()

    def writer() -> None:  # a run that logs every step, 10 steps/s
        step = history
        with open(run_dir / ev.LOG_FILE, "a") as log:
            while not stop.is_set():
                step += 1
                ev.append_event(run_dir, ev.LogEvent(step=step, max_steps=max_steps, loss=3.0 / (1 + step / 1000),
                                                     learning_rate=1e-4, tokens_per_second=5000.0,
                                                     eta_seconds=1000.0))
                log.write(f"step {step}\n")
                log.flush()
                stop.wait(0.1)

    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color"}
    sock = f"bench-dash-{os.getpid()}-{history}"
    _tmux(sock, "new-session", "-d", "-s", "b", "-x", "80", "-y", "24",
          f"{sys.executable} -m tuneplan attach {run_dir}", env=env)
    try:
        _wait_screen(sock, "bench-run", 30)
        time.sleep(2)  # let the replay of the history finish before measuring
        t = threading.Thread(target=writer, daemon=True)
        t.start()
        pid = _pane_pid(sock)
        c0, w0 = _cpu_seconds(pid), time.perf_counter()
        time.sleep(seconds)
        c1, w1 = _cpu_seconds(pid), time.perf_counter()
        stop.set()
        t.join()
        screen = _tmux(sock, "capture-pane", "-p", "-t", "b")
        shown = next((ln.strip() for ln in screen.splitlines() if "step " in ln and "/" in ln), "?")
    finally:
        _tmux(sock, "kill-server")
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"dashboard CPU following 10 steps/s with {history:,} steps of history: "
          f"{100 * (c1 - c0) / (w1 - w0):.1f}% of one core over {w1 - w0:.0f} s (target < 5%); "
          f"screen showed: {shown[:60]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="dashboard measuring window")
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        sys.exit("bench_ui needs tmux")
    first_paint()
    estimate_latency()
    keypress_in_terminal()
    for history in (100, 100_000):
        dashboard_cpu(args.seconds, history)


if __name__ == "__main__":
    main()
