"""`tuneplan eval RUN`: the tuned model and its base, side by side, on the run's held-out split.

`evaluate_run(run_dir)` measures, for the base model and for the tuned one (the adapter on
its base, or a full fine-tune's model):

- **loss and perplexity** on the held-out split the run set aside (`data.eval_fraction`;
  `training/data.py` splits with the run's seed, so the same rows come back). The rows are
  tokenized, masked and collated by the run's own trainer (`sft.build_trainer`: trl's chat
  template, completion-only / assistant-only mask, truncation, packing), so the scored tokens
  are the ones the run trained on. Loss is the mean cross-entropy per scored token (nats),
  summed over the whole split and divided once (token-weighted; the trainer's `eval_loss`
  averages per batch instead), computed in float32 from the logits; perplexity is exp(loss).
- for chat data, **greedy answers** to the held-out prompts (`inference.reply`, the run's
  chat template), scored against the reference answers: exact match and token F1 with the
  SQuAD v1.1 answer normalisation (Rajpurkar et al. 2016, its official evaluate-v1.1.py:
  lower case, no punctuation, no articles a/an/the, single spaces), and ROUGE-L, the
  F-measure of the longest common token subsequence (Lin 2004, "ROUGE: A Package for
  Automatic Evaluation of Summaries", section 3.1, with beta = 1 as in Google's rouge-score).
- with `data=` (`tuneplan eval RUN --data SOURCE`), the same measurements on every row of
  another dataset instead of the split: `other_data` reads it through `training/data.py`
  (`read_rows`, then `prepare_data` on the run's data configuration with the source and split
  replaced and nothing held out) and checks it before any model loads; the report records it
  (`scored_on = "data"`, `data_source`, `data_split`, `data_rows`).
- optionally, **lm-evaluation-harness tasks** (`tasks=`), through its Python API
  (`lm_eval.simple_evaluate` on an `HFLM` wrapping the loaded model), on both models; task
  folders given with `task_paths=` (a task YAML and its data file) work offline.

A LoRA run's base is the same loaded model with the adapter switched off
(`PeftModel.disable_adapter`), so both sides share the weights, device and dtype. The result
goes to `RUN/eval.json` (atomically; an existing one is kept unless `force`), to the run card
(`adapter/README.md` or `model/README.md`) and to the tracker (`training.report_to`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import string
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tuneplan.config import RunConfig, load_config
from tuneplan.errors import UserError
from tuneplan.events import (
    ADAPTER_DIR, CONFIG_FILE, MODEL_DIR, DataEvent, Failure, effective_phase, read_events, read_status,
)
from tuneplan.services.eval_results import (
    OTHER_DATA, EvalReport, GenerationExample, ModelScores, refuse_overwrite, run_card_path, update_card_file,
    write_eval,
)

__all__ = ["EvalReport", "GenerationExample", "ModelScores", "evaluate_run", "exact_match", "token_f1", "rouge_l",
           "normalize_answer", "resolve_tasks"]

log = logging.getLogger("tuneplan.training")

DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_MAX_ANSWERS = 100
"""Greedy answers per model (the first rows of the split): one `generate` each, the slow part;
the loss covers every held-out row."""
SHOWN_EXAMPLES = 3
GENERATION_BATCH = 16
"""At most this many prompts per `generate` call (else the run's eval micro-batch)."""
EVALUABLE_PHASES = ("done", "stopped")
TASKS_DIR = Path(__file__).resolve().parents[1] / "data" / "eval_tasks"
"""Task folders shipped with tuneplan (lm-evaluation-harness YAML + a local data file)."""


# --- answer metrics ------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's answer normalisation (evaluate-v1.1.py `normalize_answer`): lower case,
    punctuation removed, articles removed, whitespace collapsed."""
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised answers are equal, else 0.0 (SQuAD v1.1)."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall over the normalised answers' bag of tokens
    (SQuAD v1.1 `f1_score`); two empty answers agree (1.0)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (the textbook dynamic programme, one row kept)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, start=1):
            keep = row[j]
            row[j] = prev_diag + 1 if x == y else max(row[j], row[j - 1])
            prev_diag = keep
    return row[len(b)]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (Lin 2004, section 3.1): R = LCS/len(reference), P = LCS/len(prediction),
    F = 2PR/(P+R) (beta = 1), over lower-cased word tokens (punctuation split off)."""
    pred, ref = _words(prediction), _words(reference)
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", str(text).lower())


# --- checks before anything is loaded --------------------------------------------------------------

def check_evaluable(run_dir: Path) -> tuple[RunConfig, str]:
    """(the run's configuration, its phase); one line when the run cannot be evaluated."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(f"{run_dir} is not a run folder (no {CONFIG_FILE}); `tuneplan runs` lists the runs")
    config = load_config(run_dir / CONFIG_FILE)
    status = read_status(run_dir)
    phase = effective_phase(status)
    name = run_dir.name
    if status is not None and status.phase == "failed" and status.failure is Failure.NON_FINITE:
        raise UserError(f"run {name} failed with {(status.error or 'a non-finite loss').split(':')[0]}: its weights "
                        "are not numbers, there is nothing to evaluate")
    if phase in ("crashed", "failed"):
        why = f" ({status.error})" if status is not None and status.error else ""
        raise UserError(f"run {name} {phase}{why}: it has no final weights to evaluate; "
                        f"`tuneplan resume {name}` continues it, then evaluate")
    if phase not in EVALUABLE_PHASES:
        raise UserError(f"run {name} is still {phase}: evaluate it when it is done (`tuneplan attach {name}`)")
    return config, phase


def check_weights(run_dir: Path, config: RunConfig) -> None:
    """One line when the run saved neither its final weights nor a checkpoint."""
    run_dir, name = Path(run_dir), Path(run_dir).name
    final = run_dir / (MODEL_DIR if config.setup.method == "full" else ADAPTER_DIR)
    if not final.is_dir():
        from tuneplan.events import last_checkpoint

        if last_checkpoint(run_dir) is None:
            raise UserError(f"run {name} has no {final.name}/ and no checkpoint: nothing to evaluate")


def check_held_out(run_dir: Path, config: RunConfig, tasks: Sequence[str]) -> None:
    """One line when the run set no rows aside and no task was asked for."""
    if config.data.eval_fraction > 0 or tasks:
        return
    raise UserError(f"run {Path(run_dir).name} has no held-out split (data.eval_fraction = 0): score other data "
                    "with `--data FILE`, train with `--eval-fraction 0.05` to set rows aside, or give --tasks")


def _looks_like_a_path(source: str) -> bool:
    """A source that cannot be a Hub id (`name` or `owner/name`): an absolute, home or relative
    path, or more than one `/`."""
    return source.startswith(("/", "~", ".")) or source.count("/") > 1 or "\\" in source


def other_data(config: RunConfig, source: str, split: str | None) -> tuple[RunConfig, list, str]:
    """`--data SOURCE [--data-split NAME]`, read and checked before any model is loaded: (the run's
    configuration with `data.source`/`data.split` replaced, every row kept and nothing held out,
    the source's `(location, row)` pairs, their format). The rows are read by `training/data.py`
    (`read_rows`, as training reads `data.source`) and converted as the run's format takes them,
    so a missing file, a file of no rows or columns that fit the run's format, or a Hub dataset
    that cannot be had (offline and not cached) is one line."""
    from dataclasses import replace

    from tuneplan.dataset_formats import (
        FORMAT_SAMPLE_ROWS, DatasetFormatError, detect_format_of_rows, row_to_training_example,
    )
    from tuneplan.services.bundled import SAMPLE_DATA, dataset_path
    from tuneplan.training.data import read_rows

    source = str(source).strip()
    if not source:
        raise UserError("--data is empty: give a .jsonl/.json/.csv/.parquet file, tuneplan:sample-chat or a Hub "
                        "dataset id")
    local = _is_local(source)
    if split is not None and local:
        raise UserError(f"--data-split {split}: {source} is one local file (one split); --data-split picks a split "
                        "of a Hub dataset")
    if source == SAMPLE_DATA:
        path = dataset_path(source)
    elif source.startswith("tuneplan:"):
        raise UserError(f"--data {source}: the bundled dataset is {SAMPLE_DATA}")
    elif local:
        path = str(Path(source).expanduser().resolve())
        if not Path(path).is_file():
            raise UserError(f"--data {source}: no such file" + (" (it is a folder)" if Path(path).is_dir() else ""))
    elif _looks_like_a_path(source):
        raise UserError(f"--data {source}: no such file (a Hub dataset id reads `owner/name`)")
    else:
        path = source
    data = replace(config.data, source=path, split=split or type(config.data)().split, eval_fraction=0.0,
                   max_samples=None)
    eval_config = replace(config, data=data)
    try:
        rows = read_rows(eval_config)
    except UserError:
        raise
    except Exception as exc:  # datasets' and the Hub's own errors: offline, not found, gated, a bad split
        if local:
            raise UserError(f"--data {source}: {type(exc).__name__}: {_first_line(exc)}") from None
        from tuneplan.services.dataset_preview import hub_error
        from tuneplan.services.hub import hub_offline_mode, offline_fix

        name = type(exc).__name__
        if any(k in name for k in ("Offline", "Connect", "Timeout", "LocalEntryNotFound", "NetworkError")):
            # datasets raises ConnectionError("Couldn't reach ... (OfflineModeIsEnabled)") when HF_HUB_OFFLINE is set
            why = ("HF_HUB_OFFLINE is set" if hub_offline_mode() or "Offline" in str(exc)
                   else "the Hugging Face Hub cannot be reached")
            line = (f"{source}: no such local file, and as a Hub dataset: offline ({why}) and not in the local "
                    f"Hub cache; {offline_fix('a local file')}")
        else:
            line = hub_error(source, exc)
        raise UserError(f"--data {line}") from None
    if not rows:
        raise UserError(f"--data {source}: no rows; give a file with examples")
    where = Path(path).name if local else source
    try:
        fmt = (detect_format_of_rows([row for _, row in rows[:FORMAT_SAMPLE_ROWS]], source=where)
               if data.format == "auto" else data.format)
        for loc, row in rows:
            row_to_training_example(row, fmt, where=loc)
    except DatasetFormatError as exc:
        fixed = f" (the run's data.format is {data.format})" if data.format != "auto" else ""
        raise UserError(f"--data: {exc}{fixed}") from None
    return eval_config, rows, fmt


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def resolve_tasks(tasks: Sequence[str], task_paths: Sequence[Path] = ()) -> Any:
    """An lm-evaluation-harness `TaskManager` that knows every task of `tasks`: the ones shipped
    in `tuneplan/data/eval_tasks`, folders in `task_paths`, and lm-eval's own (indexed only when
    a name is not found in the first two: that takes a while); one line when the package is
    missing or a name is unknown."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("--tasks needs lm-evaluation-harness: pip install -e \".[eval]\" (or pip install lm-eval)") \
            from None
    for p in task_paths:
        if not Path(p).exists():
            raise UserError(f"--task-path {p} does not exist; give a folder (or file) of lm-eval task YAML")
    paths = [str(TASKS_DIR)] + [str(Path(p).resolve()) for p in task_paths]
    manager = TaskManager(include_path=paths, include_defaults=False)
    if all(t in manager.all_tasks for t in tasks):
        return manager
    manager = TaskManager(include_path=paths)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], sorted(known), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"unknown lm-eval task {unknown[0]!r}{hint}; `lm-eval ls tasks` lists them, "
                        f"--task-path adds a folder of task YAML")
    return manager


def check_task_data(tasks: Sequence[str], manager) -> None:
    """Load the tasks (lm-eval reads or downloads their data here) before any model is loaded:
    a dataset that cannot be had is one line, and nothing was computed in vain."""
    from lm_eval.tasks import get_task_dict

    for name in ("lm-eval", "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        get_task_dict(list(tasks), manager)
    except Exception as exc:  # datasets' and lm-eval's own errors: missing file, no network, bad YAML
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"lm-eval could not load the data of {', '.join(tasks)}: {type(exc).__name__}: {first[:300]} "
                        "(offline, only tasks whose data is a local file or already cached run)") from None


# --- the measurement -----------------------------------------------------------------------------

def evaluate_run(run_dir: Path, *, tasks: Sequence[str] = (), max_examples: int | None = None,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, max_answers: int | None = DEFAULT_MAX_ANSWERS,
                 task_paths: Sequence[Path] = (),
                 task_limit: int | None = None, model_dir: Path | None = None, force: bool = False,
                 write: bool = True, progress: Callable[[str], None] | None = None,
                 data: str | None = None, data_split: str | None = None) -> EvalReport:
    """Evaluate the run's tuned model beside its base model (see the module docstring).

    `data` scores every row of another dataset instead of the held-out split (a local
    .jsonl/.json/.csv/.parquet file, `tuneplan:sample-chat` or a Hub id; `data_split` the Hub
    split, default `train`), read, formatted and masked as the run's trainer takes its
    `data.source`; the report records it (`scored_on = "data"`, `data_source`, `data_split`,
    `data_rows`). `max_examples` caps the held-out rows scored (the first N of the split), `max_answers`
    the greedy answers per model (None: one per held-out row); `task_limit`
    caps the examples per lm-eval task. `model_dir` evaluates a plain model folder (e.g. the
    merged export) in the tuned model's place. `write=False` (or `model_dir`) writes nothing;
    otherwise `RUN/eval.json`, the run card and the tracker get the results, and an existing
    `eval.json` is kept (UserError, before anything is loaded) unless `force`."""
    started = time.monotonic()
    run_dir = Path(run_dir)
    say = progress or (lambda _text: None)
    config, _phase = check_evaluable(run_dir)
    tasks = [t.strip() for t in tasks if t and t.strip()]
    if max_examples is not None and max_examples < 1:
        raise UserError(f"--max-examples must be >= 1 (got {max_examples})")
    write = write and model_dir is None
    if data_split is not None and data is None:
        raise UserError("--data-split picks a split of the --data dataset: give --data too")
    if write and not force:
        refuse_overwrite(run_dir)
    if data is None:
        check_held_out(run_dir, config, tasks)
        eval_config, data_rows, data_fmt = config, None, None
    else:
        eval_config, data_rows, data_fmt = other_data(config, data, data_split)
    manager = resolve_tasks(tasks, task_paths) if tasks else None
    if tasks:
        check_task_data(tasks, manager)  # no progress line before the checks: bad input stays one line
    if model_dir is None:
        check_weights(run_dir, config)
    if model_dir is not None and not (Path(model_dir) / "config.json").is_file():
        raise UserError(f"{model_dir} is not a model folder (no config.json)")

    say(f"loading {config.model.source} and the tuned weights of {run_dir.name}")
    tuned, tokenizer, weights, notes = _load_tuned(run_dir, config, model_dir)
    import torch

    settings: dict[str, Any] = {"max_examples": max_examples, "max_new_tokens": max_new_tokens,
                                "max_answers": max_answers,
                                "device": str(tuned.device), "dtype": str(tuned.dtype).replace("torch.", ""),
                                "task_limit": task_limit}
    base_scores, tuned_scores = ModelScores(), ModelScores()
    examples: list[GenerationExample] = []
    base_answers: list[str] = []
    data_format, n_held_out = "none", 0
    if data is not None or config.data.eval_fraction > 0:
        if data is None:
            held_out, data_format = _held_out(run_dir, config, tokenizer, notes)
        else:
            assert data_rows is not None  # read by `other_data` above whenever `data` is given
            held_out, data_format = _other_rows(run_dir, config, eval_config, data, data_rows, tokenizer, notes)
        if max_examples is not None and max_examples < len(held_out):
            held_out = held_out.select(range(max_examples))
        n_held_out = len(held_out)
        say(f"{'held-out split' if data is None else data}: {n_held_out} examples ({data_format})")
        batches = _batches(eval_config, tuned, tokenizer, held_out)
        prompts = _prompts(held_out) if data_format == "chat" else []
        if max_answers is not None:
            prompts = prompts[:max_answers]
        gen_batch = max(1, min(GENERATION_BATCH, config.training.eval_batch or config.setup.micro_batch))
        with torch.no_grad():
            for side, scores in (("base", base_scores), ("tuned", tuned_scores)):
                with _view(side, tuned, config) as model:
                    say(f"{side}: loss on {n_held_out} examples")
                    scores.loss, scores.scored_tokens = _loss(model, batches)
                    scores.perplexity = _perplexity(scores.loss)
                    if prompts:
                        say(f"{side}: greedy answers to {len(prompts)} prompts")
                        answers = _answers(model, tokenizer, prompts, max_new_tokens, gen_batch)
                        _score_answers(scores, answers, [ref for _, ref in prompts])
                        if side == "base":
                            base_answers = answers
                        else:
                            examples = [GenerationExample(prompt=_last_user(p), reference=r, base=b, adapter=a)
                                        for (p, r), b, a in zip(prompts, base_answers, answers)][:SHOWN_EXAMPLES]
    if tasks:
        for side, scores in (("base", base_scores), ("tuned", tuned_scores)):
            with _view(side, tuned, config) as model:
                say(f"{side}: lm-eval tasks {', '.join(tasks)}")
                scores.tasks = _run_tasks(model, tokenizer, tasks, manager, task_limit)
    report = EvalReport(run=run_dir.name, base_model=config.model.source, weights=weights, method=config.setup.method,
                        data_format=data_format, held_out_examples=n_held_out, base=base_scores,
                        adapter=tuned_scores, examples=examples, tasks=list(tasks), notes=notes, settings=settings,
                        created_at=time.time(), seconds=round(time.monotonic() - started, 2))
    if data is None:
        report.data_source = _portable_source(config) if n_held_out else ""
    else:
        report.scored_on, report.data_source = OTHER_DATA, _shown_source(data)
        report.data_split = eval_config.data.split if not _is_local(data) else ""
        report.data_rows = len(data_rows or ())
    if write:
        write_eval(run_dir, report, force=force)
        update_card_file(run_card_path(run_dir, config.setup.method), report)
        _to_tracker(run_dir, config, report)
    return report


def _load_tuned(run_dir: Path, config: RunConfig, model_dir: Path | None):
    """(tuned model, tokenizer, name of the weights, notes)."""
    if model_dir is None:
        from tuneplan.training.inference import _adapter_dir, load_chat_model

        model, tokenizer, notes = load_chat_model(run_dir)
        weights = _adapter_dir(run_dir, config)[0]
        name = weights.name
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tuneplan.training.inference import _device, _quiet

        _quiet()
        import torch

        device = _device()
        from tuneplan.training.modeling import torch_dtype

        dtype = torch_dtype(config.setup.compute_dtype) if device.type == "cuda" else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map={"": device})
        model.eval()
        notes, name = [], str(model_dir)
    if getattr(tokenizer, "pad_token", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, name, notes


@contextlib.contextmanager
def _view(side: str, tuned, config: RunConfig) -> Iterator[Any]:
    """The model of one side: the tuned one, or its base (a LoRA model with the adapter
    switched off; a full fine-tune's or a plain folder's base loaded beside it)."""
    if side != "base":
        yield tuned
        return
    if hasattr(tuned, "disable_adapter") and hasattr(tuned, "peft_config"):
        with tuned.disable_adapter():
            yield tuned
        return
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(config.model.source, dtype=tuned.dtype, device_map={"": tuned.device},
                                                trust_remote_code=config.model.trust_remote_code)
    base.eval()
    try:
        yield base
    finally:
        del base


def _held_out(run_dir: Path, config: RunConfig, tokenizer, notes: list[str]):
    """(the run's held-out rows as a `datasets.Dataset`, `chat` or `text`): the same split the
    run made (`training/data.py`, the run's seed); a changed dataset is noted."""
    from tuneplan.training.data import prepare_data

    data = prepare_data(config, tokenizer, notes)
    if data.eval is None or len(data.eval) == 0:
        raise UserError(f"run {run_dir.name} has no held-out rows (data.eval_fraction = {config.data.eval_fraction} "
                        f"of {data.examples} examples); train with a larger --eval-fraction")
    recorded = [e for e in read_events(run_dir) if isinstance(e, DataEvent)]
    if recorded and recorded[-1].eval_examples not in (None, len(data.eval)):
        notes.append(f"the dataset changed since training: {len(data.eval)} held-out rows now, "
                     f"{recorded[-1].eval_examples} then; the split may hold rows the run trained on")
    return data.eval, ("text" if data.format == "text" else "chat")


def _other_rows(run_dir: Path, config: RunConfig, eval_config: RunConfig, source: str, rows: list, tokenizer,
                notes: list[str]):
    """(every row of `--data` as a `datasets.Dataset`, `chat` or `text`): `training/data.py`'s
    `prepare_data` on the run's data configuration with the source replaced and nothing held out,
    so the rows are converted, templated and length-checked as the run's trainer takes them."""
    from tuneplan.training.data import prepare_data

    prepared = prepare_data(eval_config, tokenizer, notes, rows=rows)
    if prepared.dropped_too_long:
        notes.append(f"{prepared.dropped_too_long} of the {len(rows)} rows of {source} are longer than "
                     f"seq_len={config.setup.seq_len} tokens and were dropped, as the run drops them "
                     "(data.overlong = \"drop\")")
    if prepared.truncated:
        notes.append(f"{prepared.truncated} rows of {source} are longer than seq_len={config.setup.seq_len} tokens: "
                     "scored truncated, as the run trains them")
    kind = "text" if prepared.format == "text" else "chat"
    recorded = [e for e in read_events(run_dir) if isinstance(e, DataEvent)]
    trained = recorded[-1].format if recorded else None
    if trained and (trained == "text") != (kind == "text"):
        notes.append(f"the run trained on {'text' if trained == 'text' else 'chat'} rows ({trained}); {source} has "
                     f"{kind} rows ({prepared.format})")
    if _is_local(source):
        try:
            same = Path(eval_config.data.source).resolve() == Path(config.data.source).expanduser().resolve()
        except OSError:
            same = False
    else:
        same = (eval_config.data.source, eval_config.data.split) == (config.data.source, config.data.split)
    if same:
        held = f" (its {config.data.eval_fraction:g} held-out split is what `tuneplan eval` scores without --data)" \
            if config.data.eval_fraction > 0 else ""
        notes.append(f"{source} is the run's own training data: the rows it trained on are scored{held}")
    return prepared.train, kind


def _is_local(source: str) -> bool:
    from tuneplan.dataset_formats import is_local_source
    from tuneplan.services.bundled import SAMPLE_DATA

    return source == SAMPLE_DATA or is_local_source(source)


def _shown_source(source: str) -> str:
    """The `--data` source as eval.json keeps it: a local file's absolute path, else as given."""
    from tuneplan.services.bundled import SAMPLE_DATA

    if source != SAMPLE_DATA and _is_local(source):
        return str(Path(source).expanduser().resolve())
    return source


def _portable_source(config: RunConfig) -> str:
    """The run's `data.source`, the bundled sample as `tuneplan:sample-chat`."""
    from tuneplan.services.bundled import portable_sources

    return portable_sources(config).data.source


def _batches(config: RunConfig, model, tokenizer, held_out) -> list[dict]:
    """The held-out rows tokenized, masked and collated exactly as the run's trainer does."""
    import logging as _logging

    from tuneplan.training.sft import build_trainer

    import datasets

    datasets.disable_progress_bars()  # the trainer's tokenizing maps: plain lines on the terminal
    quiet = [_logging.getLogger(n) for n in ("trl", "transformers", "tuneplan.training")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(_logging.ERROR)
    try:
        trainer = build_trainer(config, model, tokenizer, held_out, held_out, output_dir=None)
        batches = [{k: v for k, v in b.items() if k in ("input_ids", "attention_mask", "position_ids", "labels")}
                   for b in trainer.get_eval_dataloader()]
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    model.eval()
    return batches


def _loss(model, batches: list[dict]) -> tuple[float | None, int]:
    """(mean cross-entropy per scored token, scored tokens): logits in float32, the next-token
    shift of transformers' `ForCausalLMLoss` (labels -100 are not scored)."""
    import torch.nn.functional as F

    total, count = 0.0, 0
    for batch in batches:
        labels = batch["labels"].to(model.device)
        inputs = {k: v.to(model.device) for k, v in batch.items() if k != "labels"}
        logits = model(**inputs, use_cache=False).logits.float()
        shift_logits = logits[:, :-1, :].reshape(-1, logits.size(-1))
        shift_labels = labels[:, 1:].reshape(-1)
        if "position_ids" in inputs and "attention_mask" not in inputs:
            # padding-free packing: a document's first token (position 0) is not predicted by the previous document
            starts = (inputs["position_ids"][:, 1:] == 0).reshape(-1)
            shift_labels = shift_labels.masked_fill(starts, -100)
        total += float(F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum"))
        count += int((shift_labels != -100).sum())
        del logits
    return (total / count if count else None), count


def _perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    return math.exp(loss) if loss < 700 else math.inf  # exp overflows a float past ~709


def _prompts(held_out) -> list[tuple[list[dict], str]]:
    """(conversation up to the last assistant turn, that turn's text) for every chat row."""
    out = []
    for row in held_out:
        if "prompt" in row and "completion" in row:
            messages, answer = list(row["prompt"]), row["completion"]
        elif "messages" in row:
            msgs = list(row["messages"])
            last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=None)
            if last is None:
                continue
            messages, answer = msgs[:last], [msgs[last]]
        else:
            continue
        ref = answer[-1]["content"] if isinstance(answer, list) and answer else str(answer)
        out.append(([{"role": m["role"], "content": m["content"]} for m in messages], str(ref).strip()))
    return out


def _last_user(messages: list[dict]) -> str:
    users = [m["content"] for m in messages if m.get("role") == "user"]
    return users[-1] if users else (messages[-1]["content"] if messages else "")


def _answers(model, tokenizer, prompts, max_new_tokens: int, batch: int) -> list[str]:
    """Greedy answers, `batch` prompts per `generate` call: the chat template's generation
    prompt, left-padded so that every row's answer starts at the same position (a decoder
    continues from the last position; padding on the left keeps it the prompt's last token)."""
    import torch

    from tuneplan.training.inference import decode_whole_characters

    texts = [tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
             for messages, _ in prompts]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out: list[str] = []
    try:
        for i in range(0, len(texts), batch):
            enc = tokenizer(texts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            width = enc["input_ids"].shape[1]
            out += [decode_whole_characters(tokenizer, row[width:].tolist()).strip() for row in gen]
    finally:
        tokenizer.padding_side = side
    return out


def _score_answers(scores: ModelScores, answers: list[str], references: list[str]) -> None:
    n = len(answers)
    scores.generated = n
    if not n:
        return
    scores.exact_match = sum(exact_match(a, r) for a, r in zip(answers, references)) / n
    scores.token_f1 = sum(token_f1(a, r) for a, r in zip(answers, references)) / n
    scores.rouge_l = sum(rouge_l(a, r) for a, r in zip(answers, references)) / n


def _run_tasks(model, tokenizer, tasks: Sequence[str], manager, limit: int | None) -> dict[str, dict[str, float]]:
    """lm-eval's results for `tasks` on the loaded model: task -> metric -> value (stderr left out)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    for name in ("lm-eval", "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1)
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                      log_samples=False, bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
                                      torch_random_seed=0, fewshot_random_seed=0)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"lm-eval could not load the data of {', '.join(tasks)}: {first} "
                        "(offline, only tasks whose data is a local file or already cached run)") from None
    results: dict[str, dict[str, float]] = {}
    for task, metrics in (out or {}).get("results", {}).items():
        clean = {}
        for key, value in metrics.items():
            if "stderr" in key or key == "sample_len" or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            clean[key.split(",")[0]] = float(value)
        results[task] = clean
    return results


# --- where the results go ------------------------------------------------------------------------

def _to_tracker(run_dir: Path, config: RunConfig, report: EvalReport) -> None:
    """The results in the run's tracker (`training.report_to`); a tracker that fails is a warning."""
    from tuneplan.training.tracking import log_evaluation

    try:
        log_evaluation(run_dir, config, report)
    except Exception as exc:  # the tracker is a convenience: the eval is already on disk
        log.warning("could not write the evaluation to %s: %s", config.training.report_to, exc)
