"""The bake-off's records: `tuneplan compare` folders, the trials' measurements, the table.

A comparison lives in `RUNS/compare/<id>/compare.json` beside the runs it made (each trial is a
normal run folder under RUNS, named `<id>-<method>`):

    {"id", "created_at", "model", "dataset", "model_key", "dataset_key", "methods",
     "max_steps", "seq_len", "effective_batch", "seed", "epochs", "price_per_hour", "target",
     "trials": [{"method", "run", "argv", "plan", "skipped", "phase", "measured", "eval"}],
     "recommendation": {"method", "reason"} | null, "finished": bool}

`argv` is the `tuneplan train` command line (without `train`) that plans the trial again on
`--resume`. `measured` comes from the run's events (`measure_run`), `eval` from its
`eval.json` (`eval_summary`). The recommendation is `planner.bakeoff.recommend`'s; the planner
reads a finished comparison back through `find_bakeoff`. No torch here.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from planner.bakeoff import BakeoffResult, Recommendation, Trial, method_name, recommend
from tuneplan.errors import UserError, check_path
from tuneplan.events import dumps, read_events, read_status
from tuneplan.formatting import duration, size
from tuneplan.services import paths
from tuneplan.services.eval_results import EVAL_FILE  # noqa: F401  (re-exported: what `tuneplan eval RUN` writes)

COMPARE_DIR = "compare"
"""Folder under the runs root that holds the comparisons."""
COMPARE_FILE = "compare.json"
METHODS = ("lora", "qlora", "full")
DEFAULT_MAX_STEPS = 30
"""Optimizer steps of a trial when neither --max-steps nor --tokens is given."""
DEFAULT_EVAL_FRACTION = 0.1
"""Held-out share of the rows when the user gives none: every trial evaluates on it."""


def parse_methods(text: str) -> tuple[str, ...]:
    """`lora,qlora,full` -> ('lora', 'qlora', 'full'); one line naming an unknown method."""
    names = tuple(dict.fromkeys(m.strip().lower() for m in str(text).split(",") if m.strip()))
    bad = [m for m in names if m not in METHODS]
    if bad:
        raise UserError(f"--methods: unknown method {bad[0]!r}; choose from {', '.join(METHODS)} "
                        "(comma-separated, e.g. --methods lora,qlora)")
    if not names:
        raise UserError(f"--methods is empty; give some of {', '.join(METHODS)}")
    return names


def compare_root(runs_root: Path) -> Path:
    return Path(runs_root) / COMPARE_DIR


def new_compare_dir(runs_root: Path, model: str) -> Path:
    """A fresh comparison folder `cmp-<model>-<time>` (never an existing one)."""
    root = compare_root(runs_root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {root}: {exc.strerror or exc}; pick another --runs-dir") from None
    return paths.new_folder(root, f"cmp-{paths.slug(Path(model).name or model)}-{time.strftime('%Y%m%d-%H%M%S')}",
                            "comparison")


def save(folder: Path, record: dict[str, Any]) -> None:
    """Write compare.json atomically (a temp file, then a rename)."""
    path = Path(folder) / COMPARE_FILE
    tmp = path.with_name(f".{COMPARE_FILE}.{os.getpid()}.tmp")
    tmp.write_text(dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def list_compares(runs_root: Path) -> list[Path]:
    """Comparison folders, oldest first."""
    root = compare_root(runs_root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / COMPARE_FILE).is_file()]
    return sorted(found, key=lambda p: (_created(p), p.name))


def _created(folder: Path) -> float:
    try:
        return float(json.loads((folder / COMPARE_FILE).read_text(encoding="utf-8")).get("created_at") or 0)
    except (OSError, ValueError, AttributeError):
        return 0.0


def load(runs_root: Path, ident: str | None) -> tuple[Path, dict[str, Any]]:
    """A comparison by id or folder path (`latest`/None: the newest); one line when unknown."""
    if ident and ident != "latest" and (Path(ident) / COMPARE_FILE).is_file():
        folder = Path(ident)
    else:
        found = list_compares(runs_root)
        if not ident or ident == "latest":
            if not found:
                raise UserError(f"no comparison in {compare_root(runs_root)}: run `tuneplan compare --model M "
                                "--dataset D` first")
            folder = found[-1]
        else:
            check_path(ident, "the comparison id")
            folder = compare_root(runs_root) / ident
            if not (folder / COMPARE_FILE).is_file():
                known = ", ".join(p.name for p in found[-5:]) or "none yet"
                raise UserError(f"no comparison {ident!r} in {compare_root(runs_root)} (known: {known})")
    try:
        record = json.loads((folder / COMPARE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"comparison {folder.name} is unreadable: {exc}; remove {folder}") from None
    if not isinstance(record, dict) or not isinstance(record.get("trials"), list):
        raise UserError(f"comparison {folder.name} is unreadable: {folder / COMPARE_FILE} has no trials list")
    return folder, record


# -- sources: what makes two comparisons (or a comparison and a plan) about the same thing --------
def source_key(source: str | None, kind: str) -> str:
    """A model or dataset reference in one spelling: the bundled names as such, a catalog name
    as its Hub id, a local path absolute."""
    text = (source or "").strip()
    if not text:
        return ""
    from tuneplan.data import SAMPLE_CHAT, TINY_MODEL
    from tuneplan.services.bundled import SAMPLE_DATA

    if text in (TINY_MODEL, SAMPLE_DATA):
        return text
    p = Path(text).expanduser()
    if p.exists():
        resolved = p.resolve()
        if kind == "dataset" and resolved == SAMPLE_CHAT.resolve():
            return SAMPLE_DATA
        if kind == "model" and resolved.name == "tiny-llama" and resolved.parent.name.startswith("tiny-model-"):
            return TINY_MODEL
        return str(resolved)
    if kind == "model":
        from planner import catalog

        entry = catalog.find(text)
        if entry is not None:
            return entry.hub_id
    return text


# -- measurements ------------------------------------------------------------------------------
def measure_run(run_dir: Path) -> dict[str, Any]:
    """What a trial's events say: the phase and error, the steady speed (median tokens/s and
    seconds per optimizer step after the first step, which includes warm-up), the epochs one
    step covers, the final loss, and the peak memory measured beside the prediction (CUDA: the
    torch peak; CPU: the process's peak RSS, beside the predicted device bytes)."""
    from tuneplan.events import LogEvent, MemoryProbeEvent, effective_phase

    status = read_status(run_dir)
    logs: list[LogEvent] = []
    probe: MemoryProbeEvent | None = None
    for e in read_events(run_dir):
        if isinstance(e, LogEvent) and e.step is not None:
            logs.append(e)
        elif isinstance(e, MemoryProbeEvent) and probe is None:
            probe = e
    out: dict[str, Any] = {"phase": effective_phase(status), "error": status.error if status else None,
                           "step": status.step if status else 0, "loss": status.loss if status else None}
    steady = [e for e in logs if (e.step or 0) > 1] or logs
    speeds = [e.tokens_per_second for e in steady if e.tokens_per_second is not None]
    out["tokens_per_second"] = statistics.median(speeds) if speeds else None
    # seconds per step from consecutive log events of one attempt: a resumed run's clock starts
    # again at 0 (a pair across the resume goes backwards and is left out), as does its warm-up
    timed = [(e.step or 0, e.elapsed_seconds) for e in steady if e.elapsed_seconds is not None]
    per_step = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(timed, timed[1:]) if s1 > s0 and t1 > t0]
    out["seconds_per_step"] = statistics.median(per_step) if per_step else (
        timed[-1][1] / timed[-1][0] if timed and timed[-1][1] > 0 and timed[-1][0] else None)
    last = next((e for e in reversed(logs) if e.epoch is not None and e.epoch > 0), None)
    out["epochs_per_step"] = last.epoch / last.step if last is not None and last.epoch and last.step else None
    if probe is not None:
        if probe.torch_peak_bytes is not None:
            out.update(peak_bytes=probe.torch_peak_bytes, predicted_bytes=probe.predicted_torch_peak_bytes,
                       peak_kind="torch peak")
        else:
            out.update(peak_bytes=probe.rss_peak_bytes, predicted_bytes=probe.predicted_device_bytes,
                       peak_kind="process RSS vs predicted device")
    return out


METRICS = ("rouge_l", "token_f1", "exact_match")
"""The generation metric the table shows: the first one the eval report has (all higher-is-better)."""


def eval_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The tuned model's eval loss and generation metric from a run's eval.json
    (`tuneplan.services.eval_results`: `adapter` holds the tuned model's `ModelScores`)."""
    from tuneplan.services.eval_results import EvalReport

    scores = EvalReport.from_dict(report).adapter
    name = next((m for m in METRICS if getattr(scores, m) is not None), None)
    return {"eval_loss": scores.loss, "metric_name": name, "metric": getattr(scores, name) if name else None,
            "base_loss": EvalReport.from_dict(report).base.loss}


def scored_other_data(report: dict[str, Any]) -> bool:
    """Whether an eval.json scored `tuneplan eval --data` rows rather than the run's held-out
    split: the trials are compared on their shared split only."""
    from tuneplan.services.eval_results import EvalReport

    return EvalReport.from_dict(report).on_other_data


def projected(measured: dict[str, Any], epochs: float, price_per_hour: float | None,
              num_gpus: int = 1) -> tuple[float | None, float | None]:
    """(seconds, USD) of the full run (`epochs` over the dataset) at the trial's measured speed:
    the optimizer steps of `epochs` (epochs / the epochs one step covered) x seconds per step."""
    eps, sps = measured.get("epochs_per_step"), measured.get("seconds_per_step")
    if not eps or not sps:
        return None, None
    seconds = epochs / eps * sps
    cost = seconds / 3600 * price_per_hour * num_gpus if price_per_hour is not None else None
    return seconds, cost


def trials_of(record: dict[str, Any]) -> list[Trial]:
    """The planner's `Trial`s of a comparison record."""
    out = []
    for t in record.get("trials", []):
        m, ev = t.get("measured") or {}, t.get("eval") or {}
        seconds, cost = projected(m, float(record.get("epochs") or 1.0), record.get("price_per_hour"),
                                  int(t.get("num_gpus") or 1))
        skipped = t.get("skipped")
        if skipped is None and ev.get("eval_loss") is None:
            skipped = t.get("eval_error") or ("not evaluated yet" if t.get("phase") == "done" else
                                              f"{t.get('phase') or 'not run'}")
        out.append(Trial(method=t["method"], eval_loss=ev.get("eval_loss"), metric=ev.get("metric"),
                         metric_name=ev.get("metric_name"), peak_bytes=m.get("peak_bytes"),
                         predicted_bytes=m.get("predicted_bytes"), tokens_per_second=m.get("tokens_per_second"),
                         projected_seconds=seconds, projected_cost=cost, skipped=skipped))
    return out


def conclude(record: dict[str, Any]) -> Recommendation:
    rec = recommend(trials_of(record))
    record["recommendation"] = {"method": rec.method, "reason": rec.reason}
    return rec


def find_bakeoff(runs_root: Path, model: str | None, dataset: str | None) -> BakeoffResult | None:
    """The newest finished comparison of this model and dataset under `runs_root`, as the
    planner reads it (None when there is none)."""
    mk, dk = source_key(model, "model"), source_key(dataset, "dataset")
    if not mk or not dk:
        return None
    for folder in reversed(list_compares(runs_root)):
        try:
            record = json.loads((folder / COMPARE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or record.get("model_key") != mk or record.get("dataset_key") != dk:
            continue
        rec = record.get("recommendation") or {}
        if not record.get("finished") or not rec.get("method"):
            continue
        date = time.strftime("%Y-%m-%d", time.localtime(float(record.get("created_at") or 0)))
        return BakeoffResult(date=date, trials=tuple(trials_of(record)), name=folder.name,
                             recommendation=Recommendation(rec["method"], rec.get("reason") or ""))
    return None


# -- the table ---------------------------------------------------------------------------------
def render(folder: Path, record: dict[str, Any]) -> str:
    """The comparison as a table, then the skipped trials' reasons and the recommendation."""
    trials = trials_of(record)
    steps, seq, eff = record.get("max_steps"), record.get("seq_len"), record.get("effective_batch")
    head = [f"bake-off {folder.name}: {record.get('model')} on {record.get('dataset')}, {record.get('target') or ''}",
            f"  each trial: {steps} steps x effective batch {eff} x seq {seq} (seed {record.get('seed')}); "
            f"full run: {record.get('epochs', 1):g} epoch(s)"
            + (f" at ${record['price_per_hour']:g}/h" if record.get("price_per_hour") is not None else "")
            + (f"; eval on the first {record['eval_examples']} held-out rows" if record.get("eval_examples") else "")]
    cols = ("method", "eval loss", "metric", "peak mem", "tok/s", "full run", "cost")
    rows = []
    metric_name = next((t.metric_name for t in trials if t.metric_name), None)
    for t, raw in zip(trials, record.get("trials", [])):
        if not raw.get("measured"):
            rows.append((method_name(t.method), "-", "-", "-", "-", "-", "-"))
            continue
        rows.append((
            method_name(t.method),
            f"{t.eval_loss:.4f}" if t.eval_loss is not None else "-",
            f"{t.metric:.3f}" if t.metric is not None else "-",
            f"{size(t.peak_bytes)}/{size(t.predicted_bytes)}",
            f"{t.tokens_per_second:.0f}" if t.tokens_per_second else "-",
            duration(t.projected_seconds),
            f"${t.projected_cost:.2f}" if t.projected_cost is not None else "-",
        ))
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = lambda r: "  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
    out = head + ["", line(cols)] + [line(r) for r in rows]
    found = ((t.get("measured") or {}).get("peak_kind") for t in record.get("trials", []))
    kinds = sorted({str(k) for k in found if k is not None})
    notes = [f"  peak mem: measured/predicted ({', '.join(kinds)})" if kinds else
             "  peak mem: measured/predicted"]
    if metric_name:
        notes.append(f"  metric: {metric_name} on the held-out prompts (higher is better)")
    out += notes
    for t, raw in zip(trials, record.get("trials", [])):
        run = f" (run {raw['run']})" if raw.get("run") else ""
        if t.skipped:
            out.append(f"  {method_name(t.method)}: {t.skipped}{run}")
        elif raw.get("run"):
            out.append(f"  {method_name(t.method)}: run {raw['run']}")
    rec = record.get("recommendation") or {}
    out.append("")
    if rec.get("method"):
        out.append(f"Recommendation: {method_name(rec['method'])}. {rec.get('reason', '')}")
    elif rec:
        out.append(f"No recommendation: {rec.get('reason', '')}")
    if not record.get("finished"):
        out.append(f"Not finished: `tuneplan compare --resume {folder.name}` continues it.")
    return "\n".join(out)


# -- a detached comparison (the wizard's) --------------------------------------------------------
def start_detached(argv: list[str], runs_root: Path) -> tuple[int, Path]:
    """Start `tuneplan compare ARGV` in its own session (an SSH disconnect does not stop it),
    output to a log under the comparisons folder. Returns (pid, log path)."""
    root = compare_root(runs_root)
    root.mkdir(parents=True, exist_ok=True)
    log = root / f"compare-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tuneplan", "compare", *argv, "--runs-dir", str(runs_root)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc.pid, log
