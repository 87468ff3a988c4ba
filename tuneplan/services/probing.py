"""The probe report: a measured configuration beside the planner's prediction, and advice.

`tuneplan probe` measures (`tuneplan.training.probe`, in its own process); this module, which
imports no torch, puts the measurement beside the prediction (`planner`), gives each figure's
error, and turns the headroom into plain sentences with the planner re-predicting the
alternatives. It also writes `probe.json`, saves a measurement into a preset's `[evidence]`
(never over an existing one without `force`), and runs a probe as a child process for the
wizard and for `bench/gpu_check.py`.

Error = (predicted - measured) / measured: positive when the planner over-predicts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from planner.setup import TrainSetup
from tuneplan.errors import UserError
from tuneplan.formatting import size  # noqa: F401  (the probe table's byte format, re-exported)

PROBE_FILE = "probe.json"
PROBE_FORMAT = 1
HEADROOM_TO_GROW = 0.15
"""Grow the micro-batch or sequence only when more than this fraction of usable memory is unused."""
PREDICTION_TOLERANCE = 0.10
"""Above this error on a memory figure the advice says the plan was off (planner/memory.py is
tested to within 5% of the CPU trace; allocator and driver figures carry more spread)."""
_METHOD = {"lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tuning"}


def error(predicted: float | None, measured: float | None) -> float | None:
    """(predicted - measured) / measured, or None when either is unknown or measured is 0."""
    if predicted is None or not measured:
        return None
    return (predicted - measured) / measured


@dataclass(frozen=True)
class Prediction:
    """The planner's figures for one setup on one piece of hardware. Bytes, seconds."""

    torch_peak_bytes: int
    reserved_bytes: int | None
    """torch peak + the allocator's reserve (planner component `allocator_overhead`); None on the CPU."""
    device_bytes: int | None
    """What nvidia-smi shows for the process; None on the CPU (no GPU memory to predict)."""
    tokens_per_second: float | None
    step_seconds: float | None

    @classmethod
    def of(cls, memory: Any, throughput: Any) -> "Prediction":
        return cls(torch_peak_bytes=memory.torch_peak_bytes,
                   reserved_bytes=memory.torch_peak_bytes + int(memory.components.get("allocator_overhead", 0)),
                   device_bytes=memory.device_bytes, tokens_per_second=throughput.tokens_per_second,
                   step_seconds=throughput.optimizer_step_seconds)


def predict(spec: Any, hardware: Any, setup: TrainSetup, *, on_cpu: bool = False) -> Prediction:
    """The planner's prediction of one training step of `setup`. `on_cpu`: the same step run on
    the CPU (`planner.memory.estimate_memory(device="cpu")`, rows of equal length, as the probe
    feeds them): that is what the CPU probe's live tensor bytes measure."""
    from planner.memory import estimate_memory
    from tuneplan.services.planning import estimate

    est = estimate(spec, hardware, setup)
    pred = Prediction.of(est["memory"], est["throughput"])
    if on_cpu:
        mem = estimate_memory(spec, setup, hardware.gpu, device="cpu", padded_rows=False)
        pred = replace(pred, torch_peak_bytes=mem.torch_peak_bytes, reserved_bytes=None, device_bytes=None)
    return pred


@dataclass
class ProbeReport:
    """Prediction beside measurement, with advice; what `probe.json` holds."""

    model: str
    random_weights: bool
    setup: TrainSetup
    hardware_name: str
    usable_bytes: int
    safety_margin: float
    prediction: Prediction
    measured: dict[str, Any]
    """`tuneplan.training.probe.Measurement.to_dict()`."""
    advice: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: str = ""
    """How the configuration was given: `flags`, `preset NAME`, `config PATH`."""

    @property
    def on_cpu(self) -> bool:
        return self.measured.get("device") != "cuda"

    def rows(self) -> list[tuple[str, Any, Any, float | None, str]]:
        """(figure, predicted, measured, error, kind) with kind `bytes`, `rate` or `seconds`."""
        p, m = self.prediction, self.measured
        if self.on_cpu:
            return [
                ("torch peak (live tensors)", p.torch_peak_bytes, m.get("torch_peak_bytes"),
                 error(p.torch_peak_bytes, m.get("torch_peak_bytes")), "bytes"),
                ("process memory (CPU RSS)", None, m.get("process_bytes"), None, "bytes"),
                ("tokens/s", p.tokens_per_second, m.get("tokens_per_second"),
                 error(p.tokens_per_second, m.get("tokens_per_second")), "rate"),
                ("seconds / optimizer step", p.step_seconds, m.get("step_seconds"),
                 error(p.step_seconds, m.get("step_seconds")), "seconds"),
            ]
        return [
            ("torch peak allocated", p.torch_peak_bytes, m.get("torch_peak_bytes"),
             error(p.torch_peak_bytes, m.get("torch_peak_bytes")), "bytes"),
            ("torch peak reserved", p.reserved_bytes, m.get("torch_reserved_bytes"),
             error(p.reserved_bytes, m.get("torch_reserved_bytes")), "bytes"),
            ("nvidia-smi (process)", p.device_bytes, m.get("process_bytes"),
             error(p.device_bytes, m.get("process_bytes")), "bytes"),
            ("tokens/s", p.tokens_per_second, m.get("tokens_per_second"),
             error(p.tokens_per_second, m.get("tokens_per_second")), "rate"),
            ("seconds / optimizer step", p.step_seconds, m.get("step_seconds"),
             error(p.step_seconds, m.get("step_seconds")), "seconds"),
        ]

    def to_dict(self) -> dict[str, Any]:
        from tuneplan.services.planning import config_dict

        return {
            "format": PROBE_FORMAT, "model": self.model, "random_weights": self.random_weights,
            "source": self.source, "config": config_dict(self.setup),
            "hardware": {"name": self.hardware_name, "usable_bytes": self.usable_bytes,
                         "safety_margin": self.safety_margin},
            "predicted": {"torch_peak_bytes": self.prediction.torch_peak_bytes,
                          "torch_reserved_bytes": self.prediction.reserved_bytes,
                          "device_bytes": self.prediction.device_bytes,
                          "tokens_per_second": self.prediction.tokens_per_second,
                          "step_seconds": self.prediction.step_seconds},
            "measured": self.measured,
            "errors": {_key(name): err for name, _, _, err, _ in self.rows()},
            "advice": list(self.advice), "notes": list(self.notes),
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def render(self) -> str:
        """The human report: the table, then the advice."""
        s = self.setup
        m = self.measured
        what = describe(s)
        weights = " (random weights)" if self.random_weights else ""
        lines = [f"Probe of {self.model}{weights} on {m.get('device_name')} ({m.get('device')}): {what}",
                 f"  {m.get('warmup_steps')} warm-up + {m.get('steps')} measured optimizer steps of "
                 f"{m.get('tokens_per_step'):,} tokens; model ready in {_secs(m.get('load_seconds'))}; "
                 f"peaks read after optimizer step {m.get('peak_step')}"]
        if self.on_cpu:
            lines.append("  No CUDA GPU: the probe ran on the CPU. Its memory figures are host memory (CPU RSS and "
                         "live tensor bytes), not GPU memory.")
        lines.append("")
        lines.append(f"  {'':<27}{'predicted':>12}{'measured':>12}{'error':>9}")
        for name, pred, meas, err, kind in self.rows():
            fmt = {"bytes": size, "rate": _rate, "seconds": _secs}[kind]
            lines.append(f"  {name:<27}{fmt(pred):>12}{fmt(meas):>12}{_pct(err):>9}")
        lines.append("  (error = predicted vs measured; + means the planner over-predicts)")
        if self.advice:
            lines.append("")
            lines.append("Advice:")
            lines += [f"  - {a}" for a in self.advice]
        return "\n".join(lines)


def report_from_dict(data: dict[str, Any]) -> ProbeReport:
    """A `probe.json` dict back into a report (to render it)."""
    config = {k: v for k, v in data["config"].items() if k != "effective_batch"}
    if isinstance(config.get("lora_targets"), list):
        config["lora_targets"] = tuple(config["lora_targets"])
    p = data["predicted"]
    return ProbeReport(
        model=data["model"], random_weights=data["random_weights"], setup=TrainSetup(**config),
        hardware_name=data["hardware"]["name"], usable_bytes=data["hardware"]["usable_bytes"],
        safety_margin=data["hardware"]["safety_margin"],
        prediction=Prediction(p["torch_peak_bytes"], p["torch_reserved_bytes"], p["device_bytes"],
                              p["tokens_per_second"], p["step_seconds"]),
        measured=data["measured"], advice=list(data.get("advice", [])), notes=list(data.get("notes", [])),
        source=data.get("source", ""))


def _key(name: str) -> str:
    return {"torch peak allocated": "torch_peak", "torch peak (live tensors)": "torch_peak",
            "torch peak reserved": "torch_reserved", "nvidia-smi (process)": "device",
            "process memory (CPU RSS)": "cpu_rss", "tokens/s": "tokens_per_second",
            "seconds / optimizer step": "step_seconds"}[name]


def _pct(x: float | None) -> str:
    if x is None:
        return "-"
    return "0.0%" if abs(x) < 0.0005 else f"{x * 100:+.1f}%"


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _secs(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f} s" if x < 1 else f"{x:.2f} s" if x < 100 else f"{x:.0f} s"


def describe(s: TrainSetup) -> str:
    """`LoRA r16, seq 2048, micro-batch 4 x 1, checkpointing, adamw, bfloat16`."""
    parts = [_METHOD[s.method] + (f" r{s.lora_rank}" if s.method != "full" else ""), f"seq {s.seq_len}",
             f"micro-batch {s.micro_batch} x {s.grad_accum}",
             "checkpointing" if s.grad_checkpointing else "no checkpointing", s.optimizer, s.compute_dtype]
    return ", ".join(parts)


# -- advice --------------------------------------------------------------------------------------
APPLY = "Apply it: "
"""Starts an advice item that is a command line (`tuneplan train ...`), not a sentence."""


def advise(spec: Any, hardware: Any, setup: TrainSetup, prediction: Prediction, measured: dict[str, Any], *,
           safety_margin: float, on_cpu: bool = False, dataset_p99: int | None = None,
           apply: Callable[[TrainSetup], str] | None = None) -> list[str]:
    """Plain sentences: grow the micro-batch / sequence where the measurement leaves room
    (each alternative re-predicted by the planner and corrected by this probe's error), or what
    to change where the margin is too thin. A longer sequence is suggested only up to the
    dataset's 99th-percentile example (`dataset_p99`, tokens; rounded up as the planner rounds):
    a longer one trains padding. `apply(setup)`: the command line that trains `setup`; each
    change suggested is followed by an item `APPLY + command`."""
    usable = hardware.usable_bytes()
    budget = int(usable * (1 - safety_margin))
    out: list[str] = []
    # what this configuration really needs, and how far off the planner was (to correct the
    # planner's figures for the alternatives)
    if not on_cpu and measured.get("process_bytes"):
        used, label = measured["process_bytes"], "nvidia-smi"
        ratio = used / prediction.device_bytes if prediction.device_bytes else 1.0
    elif on_cpu and measured.get("process_bytes"):
        used, label = measured["process_bytes"], "CPU RSS"
        meas_peak = measured.get("torch_peak_bytes")
        ratio = meas_peak / prediction.torch_peak_bytes if (meas_peak and prediction.torch_peak_bytes) else 1.0
    else:
        used, label, ratio = prediction.device_bytes or prediction.torch_peak_bytes, "predicted", 1.0
    ratio = max(ratio, 1.0)  # never trust the planner more than it measured

    peak_err = error(prediction.torch_peak_bytes, measured.get("torch_peak_bytes"))
    if peak_err is not None and abs(peak_err) > PREDICTION_TOLERANCE:
        way = "over" if peak_err > 0 else "under"
        out.append(f"The planner {way}-predicted the torch peak by {abs(peak_err) * 100:.0f}% here (tolerance "
                   f"{PREDICTION_TOLERANCE * 100:.0f}%): the advice below corrects its figures by this probe.")

    def need(s: TrainSetup) -> tuple[int, Prediction]:
        """Memory `s` would use here: the planner's figure corrected by this probe's error (GPU:
        nvidia-smi; CPU: this RSS plus the predicted change of the torch peak)."""
        p = predict(spec, hardware, s, on_cpu=on_cpu)
        if on_cpu:
            return int(used + (p.torch_peak_bytes - prediction.torch_peak_bytes) * ratio), p
        return int((p.device_bytes or p.torch_peak_bytes) * ratio), p

    free = usable - used
    where = "of RAM available" if on_cpu else "usable"
    if used > budget:
        out.append(f"Thin margin: this configuration uses {size(used)} ({label}) of {size(usable)} {where}; the "
                   f"{safety_margin * 100:.0f}% safety margin allows {size(budget)}. A longer batch, another "
                   "process or fragmentation can run it out of memory.")
        for change, s in _smaller(setup):
            n, p = need(s)
            if n <= budget:
                out.append(f"Change: {change}. Predicted {size(n)} with this probe's correction, which leaves the "
                           f"margin{_speed_note(p, prediction)}.")
                if apply is not None:
                    out.append(APPLY + apply(s))
                break
        else:
            out.append("None of micro-batch 1, checkpointing, an 8-bit paged optimizer or QLoRA brings it under the "
                       "margin here: use a shorter sequence or a bigger card (`tuneplan plan` lists them).")
        return out
    if free <= HEADROOM_TO_GROW * usable:
        out.append(f"Good fit: {size(used)} ({label}) of {size(usable)} {where}, {size(free)} left, above the "
                   f"{safety_margin * 100:.0f}% safety margin. Keep this configuration.")
        return out
    out.append(f"Headroom: {size(free)} of {size(usable)} {where} unused ({label} {size(used)}).")
    grown = False
    best = None
    for change, s in _bigger_batches(setup):
        n, p = need(s)
        if n <= budget:
            best = (change, s, n, p)
    if best is not None:
        change, s, n, p = best
        out.append(f"The planner says {change} fits: predicted {size(n)} with this probe's correction, under "
                   f"{size(budget)}{_speed_note(p, prediction)}.")
        if apply is not None:
            out.append(APPLY + apply(s))
        grown = True
    limit = spec.max_position_embeddings or setup.seq_len
    if dataset_p99 is not None:
        from planner.solver import SEQ_ROUND

        limit = min(limit, -(-dataset_p99 // SEQ_ROUND) * SEQ_ROUND)  # the plan's own rounding (choose_seq_len)
    longest: tuple[TrainSetup, int, Prediction] | None = None
    seq = setup.seq_len * 2
    while setup.seq_len < limit:
        s = replace(setup, seq_len=min(seq, limit))
        n, p = need(s)
        if n > budget:
            break
        longest = (s, n, p)
        if seq >= limit:
            break
        seq *= 2
    if dataset_p99 is None and longest is not None:
        out.append(f"A longer sequence than {setup.seq_len} tokens would fit, but helps only if your examples are "
                   "longer: probe with --dataset to measure them.")
        grown = True
    elif longest is not None:
        s, n, p = longest
        out.append(f"Or a longer sequence: {s.seq_len} tokens (from {setup.seq_len}; the dataset's 99th-percentile "
                   f"example is {dataset_p99}) fits at this micro-batch, predicted {size(n)} with this probe's "
                   "correction.")
        if apply is not None:
            out.append(APPLY + apply(s))
        grown = True
    if not grown:
        out.append("No larger micro-batch or longer sequence fits under the margin; keep this configuration.")
    return out


def _speed_note(p: Prediction, base: Prediction) -> str:
    if not p.tokens_per_second or not base.tokens_per_second:
        return ""
    return f", ~{p.tokens_per_second / base.tokens_per_second:.2f}x the tokens/s"


def _bigger_batches(s: TrainSetup):
    """Larger micro-batches, smallest first: within the effective batch (accumulation shrinks),
    else doubling it (the effective batch grows, said)."""
    eff = s.micro_batch * s.grad_accum
    grew = False
    for mb in range(s.micro_batch * 2, eff + 1):
        if eff % mb == 0:
            grew = True
            yield (f"micro-batch {mb} x accumulation {eff // mb} (from {s.micro_batch} x {s.grad_accum}, same "
                   f"effective batch {eff})", replace(s, micro_batch=mb, grad_accum=eff // mb))
    if not grew:
        for k in (2, 4, 8):
            mb = s.micro_batch * k
            yield (f"micro-batch {mb} (from {s.micro_batch}; the effective batch grows to {mb * s.grad_accum})",
                   replace(s, micro_batch=mb))


def _smaller(s: TrainSetup):
    """Changes that need less memory, least disruptive first."""
    eff = s.micro_batch * s.grad_accum
    mb = s.micro_batch
    while mb > 1:
        mb //= 2
        if eff % mb == 0:
            yield (f"micro-batch {mb} x accumulation {eff // mb} (from {s.micro_batch} x {s.grad_accum}, same "
                   f"effective batch)", replace(s, micro_batch=mb, grad_accum=eff // mb))
    if not s.grad_checkpointing:
        yield "gradient checkpointing on", replace(s, grad_checkpointing=True)
    if s.optimizer in ("adamw", "paged-adamw-32bit"):
        yield "optimizer paged-adamw-8bit", replace(s, optimizer="paged-adamw-8bit")
    if s.method == "lora":
        yield "QLoRA (4-bit frozen weights) instead of LoRA", replace(s, method="qlora")


# -- files ---------------------------------------------------------------------------------------
def write_report(report: ProbeReport, path: Path) -> tuple[Path, bool]:
    """Write `probe.json` (atomically); returns (path, whether an older report was replaced)."""
    path = Path(path)
    if path.is_dir():
        path = path / PROBE_FILE
    existed = path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path, existed


def evidence_of(report: ProbeReport) -> Any:
    """The measurement as a preset's `[evidence]` (`tuneplan.services.presets.PresetEvidence`)."""
    from tuneplan.services.presets import PresetEvidence

    m = report.measured
    env = m.get("environment") or {}
    cuda = not report.on_cpu
    return PresetEvidence(
        run="probe" + (" (random weights)" if report.random_weights else ""),
        recorded=time.strftime("%Y-%m-%d", time.gmtime()), outcome="probe", steps=m.get("steps"),
        gpu_name=m.get("device_name") if cuda else "cpu", gpu_memory_bytes=env.get("gpu_memory_bytes"),
        driver_version=env.get("driver_version"), cuda_version=env.get("cuda_version"),
        torch_version=env.get("torch_version"), transformers_version=env.get("transformers_version"),
        peft_version=env.get("peft_version"), trl_version=env.get("trl_version"),
        bitsandbytes_version=env.get("bitsandbytes_version"),
        peak_memory_bytes=m.get("torch_peak_bytes"), peak_reserved_bytes=m.get("torch_reserved_bytes"),
        predicted_device_bytes=report.prediction.device_bytes,
        tokens_per_second=round(m["tokens_per_second"], 1) if m.get("tokens_per_second") else None,
        environment_source="probe",
    )


def save_evidence(name: str, report: ProbeReport, *, force: bool = False) -> Path:
    """Write the probe's measurement into preset `name`'s `[evidence]` table; the rest of the
    file stays as it is. Refuses a shipped preset, and a preset that already holds evidence
    unless `force`."""
    import tomli_w

    from tuneplan.services import presets as P

    preset = P.find_preset(name)
    if preset.origin == "shipped" or preset.path is None:
        raise UserError(f"preset {preset.name} is shipped with tuneplan: copy it into your presets folder "
                        f"({P.user_dir()}) to record evidence in it")
    if preset.evidence is not None and not force:
        raise UserError(f"preset {preset.name} already holds [evidence] ({preset.path}); add --force to replace it")
    text = _without_table(preset.path.read_text(encoding="utf-8"), "evidence").rstrip("\n")
    table = {k: v for k, v in vars(evidence_of(report)).items() if v is not None}
    text = text + "\n\n" + tomli_w.dumps({"evidence": table})
    P.preset_from_toml(text, str(preset.path))  # what we write must read back
    return P.write_preset_text(text, preset.path, force=True)


def _without_table(text: str, table: str) -> str:
    """TOML text without the top-level `[table]` section (up to the next top-level header)."""
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        head = line.strip()
        if head.startswith("[") and not head.startswith("[["):
            skipping = head == f"[{table}]"
        if not skipping:
            out.append(line)
    return "".join(out)


# -- running a probe in its own process ----------------------------------------------------------
def run_probe_process(args: list[str], out: Path, *, timeout: float | None = None,
                      env: dict[str, str] | None = None) -> tuple[dict[str, Any] | None, str]:
    """`tuneplan probe ARGS --out OUT` in a child process (its GPU memory goes when it ends).

    Returns (the probe.json dict or None, one line saying what happened: the report's first
    advice, the child's error line, or the timeout)."""
    out = Path(out)
    cmd = [sys.executable, "-m", "tuneplan", "probe", *args, "--out", str(out)]
    child_env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    if proc.returncode != 0 or not out.is_file():
        lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
        err = next((ln for ln in reversed(lines) if "error" in ln.lower() or "memory" in ln.lower()),
                   lines[-1] if lines else f"exit code {proc.returncode}")
        return None, err.strip()
    data = json.loads(out.read_text(encoding="utf-8"))
    return data, (data.get("advice") or ["done"])[0]
