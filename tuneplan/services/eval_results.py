"""`RUN/eval.json`: what `tuneplan eval RUN` measured, the base model beside the tuned one.

The schema lives here, below training and ui, so that `tuneplan/training/evaluation.py` (which
measures), the dashboard (which shows the summary) and `tuneplan push` (which puts it on the
model card) read one definition. No torch here. The file is written whole or not at all (a
temporary file renamed over it), and an existing one is replaced only when asked (`--force`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneplan.errors import UserError
from tuneplan.events import ADAPTER_DIR, MODEL_DIR, dumps

EVAL_FILE = "eval.json"
SCHEMA_VERSION = 1
HELD_OUT = "held-out"
OTHER_DATA = "data"
"""`EvalReport.scored_on`: the run's held-out split, or the rows of `tuneplan eval --data SOURCE`."""
CARD_START = "<!-- tuneplan eval -->"
CARD_END = "<!-- /tuneplan eval -->"
"""Markers around the evaluation section of a run card: a new eval replaces the section, never the card."""


@dataclass
class ModelScores:
    """One model's results on the run's held-out split (None: not measured)."""

    loss: float | None = None
    """Mean cross-entropy per scored token (nats), over the tokens the run trains on (its loss mask)."""
    perplexity: float | None = None
    """exp(loss)."""
    scored_tokens: int = 0
    exact_match: float | None = None
    """Share of greedy answers equal to the reference after normalisation (0..1)."""
    token_f1: float | None = None
    """Mean token-overlap F1 of the greedy answers against the references (0..1)."""
    rouge_l: float | None = None
    """Mean ROUGE-L F-measure (longest common subsequence of tokens) against the references (0..1)."""
    generated: int = 0
    """Prompts answered."""
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)
    """lm-evaluation-harness results: task -> metric -> value."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelScores:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass
class GenerationExample:
    """One held-out prompt with its reference and both models' greedy answers."""

    prompt: str
    reference: str
    base: str
    adapter: str


@dataclass
class EvalReport:
    """What `evaluate_run` measured; `to_dict()` is the content of `RUN/eval.json`."""

    run: str
    base_model: str
    weights: str
    """The tuned weights evaluated: `adapter`, `model`, a checkpoint's name, or a folder."""
    method: str
    data_format: str
    """`chat` (answers generated and scored) or `text` (loss only); `none` without data scored."""
    held_out_examples: int
    """Rows scored: of the run's held-out split, or of `--data` (see `scored_on`); the key keeps its name."""
    base: ModelScores
    adapter: ModelScores
    examples: list[GenerationExample] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    """How it was measured: max_examples, max_new_tokens, device, dtype, task limit."""
    created_at: float = 0.0
    seconds: float = 0.0
    schema: int = SCHEMA_VERSION
    scored_on: str = HELD_OUT
    """Which rows were scored: `held-out` (the run's own split; every eval.json written before
    `--data` existed) or `data` (`tuneplan eval RUN --data SOURCE`, not the run's split)."""
    data_source: str = ""
    """The dataset scored: the run's `data.source`, or the `--data` SOURCE as given (a local file's
    absolute path, `tuneplan:sample-chat`, a Hub id). Empty in older files."""
    data_split: str = ""
    """The Hub split read (`--data-split`; empty for a local file and for the held-out split)."""
    data_rows: int = 0
    """Rows SOURCE gave (before `--max-examples` and rows dropped as over-long); 0 for the held-out split."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalReport:
        return cls(run=str(d.get("run", "")), base_model=str(d.get("base_model", "")),
                   weights=str(d.get("weights", "")), method=str(d.get("method", "")),
                   data_format=str(d.get("data_format", "")), held_out_examples=int(d.get("held_out_examples", 0)),
                   base=ModelScores.from_dict(d.get("base") or {}), adapter=ModelScores.from_dict(d.get("adapter") or {}),
                   examples=[GenerationExample(**e) for e in d.get("examples") or []],
                   tasks=list(d.get("tasks") or []), notes=list(d.get("notes") or []),
                   settings=dict(d.get("settings") or {}), created_at=float(d.get("created_at") or 0.0),
                   seconds=float(d.get("seconds") or 0.0), schema=int(d.get("schema", SCHEMA_VERSION)),
                   scored_on=str(d.get("scored_on") or HELD_OUT), data_source=str(d.get("data_source") or ""),
                   data_split=str(d.get("data_split") or ""), data_rows=int(d.get("data_rows") or 0))

    @property
    def on_other_data(self) -> bool:
        """Whether `--data` rows were scored instead of the run's held-out split."""
        return self.scored_on == OTHER_DATA

    def data_label(self) -> str:
        """What was scored, in words: `the held-out split` or `SOURCE (split S)`."""
        if not self.on_other_data:
            return "the held-out split"
        return self.data_source + (f" (split {self.data_split})" if self.data_split else "")


def eval_path(run_dir: Path) -> Path:
    return Path(run_dir) / EVAL_FILE


def read_eval(run_dir: Path) -> EvalReport | None:
    """The run's eval report, or None when it has none (or the file cannot be read as one)."""
    try:
        data = json.loads(eval_path(run_dir).read_text(encoding="utf-8"))
        return EvalReport.from_dict(data)
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def refuse_overwrite(run_dir: Path) -> None:
    """One line when `RUN/eval.json` exists: it is kept unless the caller forces a new one."""
    path = eval_path(run_dir)
    if path.exists():
        old = read_eval(run_dir)
        what = f" (on {old.data_label()})" if old is not None and (old.held_out_examples or old.on_other_data) else ""
        raise UserError(f"{path} already exists{what}: its results are kept; pass --force to evaluate again and "
                        f"replace it, or `tuneplan eval {Path(run_dir).name} --show` to print it")


def write_eval(run_dir: Path, report: EvalReport, *, force: bool = False) -> Path:
    """Write `RUN/eval.json` atomically (temporary file, then rename); an existing one is kept
    unless `force`."""
    path = eval_path(run_dir)
    if not force:
        refuse_overwrite(run_dir)
    tmp = path.with_name(f".{EVAL_FILE}.{os.getpid()}.tmp")
    try:
        tmp.write_text(dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# --- presentation (the command, the dashboard, the cards) ---------------------------------------

def _num(v: float | None, digits: int = 4) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _ppl(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-" if v is None else "inf"
    return f"{v:.1f}" if v < 1e6 else f"{v:.3e}"


def metric_rows(report: EvalReport) -> list[tuple[str, str, str, str]]:
    """(metric, base, tuned, change) rows: loss and perplexity, the generation metrics, the tasks."""
    b, a = report.base, report.adapter
    rows: list[tuple[str, str, str, str]] = []
    if a.loss is not None or b.loss is not None:
        change = f"{a.loss - b.loss:+.4f}" if a.loss is not None and b.loss is not None else ""
        rows.append(("loss", _num(b.loss), _num(a.loss), change))
        rows.append(("perplexity", _ppl(b.perplexity), _ppl(a.perplexity), ""))
    for name, key in (("exact match", "exact_match"), ("token F1", "token_f1"), ("ROUGE-L", "rouge_l")):
        bv, av = getattr(b, key), getattr(a, key)
        if bv is None and av is None:
            continue
        change = f"{100 * (av - bv):+.1f} pts" if av is not None and bv is not None else ""
        rows.append((name, _pct(bv), _pct(av), change))
    for task in sorted(set(b.tasks) | set(a.tasks)):
        for metric in sorted(set(b.tasks.get(task, {})) | set(a.tasks.get(task, {}))):
            bv, av = b.tasks.get(task, {}).get(metric), a.tasks.get(task, {}).get(metric)
            change = f"{av - bv:+.4f}" if isinstance(av, (int, float)) and isinstance(bv, (int, float)) else ""
            rows.append((f"{task} {metric}", _num(bv), _num(av), change))
    return rows


def table_lines(report: EvalReport) -> list[str]:
    """The side-by-side table `tuneplan eval` prints."""
    rows = [("", "base", "tuned", "change")] + metric_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def summary(report: EvalReport) -> str:
    """One line: loss and the first generation metric, base -> tuned."""
    b, a = report.base, report.adapter
    parts = []
    if a.loss is not None and b.loss is not None:
        where = f"loss on {_short(report.data_source)}" if report.on_other_data else "held-out loss"
        parts.append(f"{where} {b.loss:.4f} -> {a.loss:.4f}")
    for name, key in (("exact match", "exact_match"), ("ROUGE-L", "rouge_l")):
        bv, av = getattr(b, key), getattr(a, key)
        if bv is not None and av is not None:
            parts.append(f"{name} {_pct(bv)} -> {_pct(av)}")
            break
    for task in sorted(a.tasks)[:1]:
        metric = sorted(a.tasks[task])[0] if a.tasks[task] else None
        if metric is not None:
            parts.append(f"{task} {metric} {_num(b.tasks.get(task, {}).get(metric), 3)} -> "
                         f"{_num(a.tasks[task][metric], 3)}")
    return ("eval (base -> tuned): " + ", ".join(parts)) if parts else "eval: no results"


def card_section(report: EvalReport) -> list[str]:
    """The markdown section a model card carries (the run card and `push`'s card)."""
    if report.on_other_data:
        what = (f"{report.held_out_examples} examples of `{_md(report.data_label())}` "
                f"(other data, not the run's held-out split)")
    else:
        what = (f"{report.held_out_examples} held-out examples of the run's own dataset" if report.held_out_examples
                else "no held-out split")
    lines = ["## Evaluation", "",
             f"`tuneplan eval` on {what}: the base model beside the tuned one "
             f"(loss per scored token; greedy answers scored against the references).", "",
             "| metric | base | tuned | change |", "| --- | --- | --- | --- |"]
    lines += [f"| {m} | {b} | {a} | {c} |" for m, b, a, c in metric_rows(report)]
    if report.examples:
        lines += ["", "Examples (prompt / reference / base / tuned):", ""]
        for ex in report.examples[:3]:
            lines.append(f"- `{_md(ex.prompt)}` / `{_md(ex.reference)}` / `{_md(ex.base)}` / `{_md(ex.adapter)}`")
    return lines


def _short(source: str) -> str:
    """A dataset source for one line: a local file's name, else the source as given."""
    return Path(source).name if os.sep in source and os.path.exists(source) else source


def _md(text: str, limit: int = 80) -> str:
    text = " ".join(str(text).split()).replace("`", "'") or "(empty)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def with_card_section(card: str, report: EvalReport) -> str:
    """`card` with its evaluation section replaced (or appended): earlier content is kept."""
    block = "\n".join([CARD_START, *card_section(report), CARD_END])
    if CARD_START in card and CARD_END in card:
        head, rest = card.split(CARD_START, 1)
        tail = rest.split(CARD_END, 1)[1]
        return head + block + tail
    return card.rstrip("\n") + "\n\n" + block + "\n"


def run_card_path(run_dir: Path, method: str) -> Path:
    """The run card the runner writes beside the final weights (`adapter/README.md`, or
    `model/README.md` for a full fine-tune); it exists once the run saved them."""
    return Path(run_dir) / (MODEL_DIR if method == "full" else ADAPTER_DIR) / "README.md"


def update_card_file(path: Path, report: EvalReport) -> bool:
    """Put the evaluation section into the card at `path` (atomically); False when there is no card."""
    path = Path(path)
    if not path.is_file():
        return False
    text = with_card_section(path.read_text(encoding="utf-8"), report)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


# --- running `tuneplan eval` from the dashboard ----------------------------------------------------

EVAL_LOG = "eval.log"
"""What `tuneplan eval` started by the dashboard printed (its progress, its result or its one error line)."""


def start_eval(run_dir: Path, *, force: bool = False):
    """Start `tuneplan eval RUN` as its own process (its own session: it finishes and writes
    `eval.json` even when the dashboard is closed); its output goes to `RUN/eval.log`.
    Returns the `subprocess.Popen`."""
    import subprocess
    import sys

    run_dir = Path(run_dir)
    cmd = [sys.executable, "-m", "tuneplan", "eval", str(run_dir)] + (["--force"] if force else [])
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    with open(run_dir / EVAL_LOG, "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, close_fds=True)


def eval_error(run_dir: Path) -> str | None:
    """The error line of the last `tuneplan eval` in `RUN/eval.log` (None when there is none)."""
    try:
        lines = (Path(run_dir) / EVAL_LOG).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("tuneplan: error: "):
            return line[len("tuneplan: error: "):]
        if line.startswith("Traceback"):
            return f"tuneplan eval failed: see {Path(run_dir) / EVAL_LOG}"
    return None
