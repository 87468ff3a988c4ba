"""The model card (README.md) of a trained run: one builder for the card the run's final folder
holds and the one `tuneplan push` uploads.

The metadata is what the Hub reads: `base_model`, `library_name` (`peft` for an adapter,
`transformers` for a full fine-tune or a merged model), the `base_model:adapter:<base>` /
`base_model:finetune:<base>` tag PEFT's own cards carry (`peft/peft_model.py`,
`create_or_update_model_card`), `lora`, `transformers`, `trl`, `sft`, the Hub datasets. The
body: what the run was (the LoRA line only for an adapter), what it measured (memory, speed;
`presets.evidence_from_run`), its final and eval loss, how to load it (peft for an adapter,
transformers otherwise), `tuneplan eval`'s results (base beside tuned) when `RUN/eval.json`
exists, the notes of the run and its resolved configuration.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from tuneplan.config import RunConfig, config_to_dict
from tuneplan.events import EvalEvent, read_events

REPO_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def is_hub_id(source: str) -> bool:
    """`org/name` that is not a path here."""
    return bool(REPO_ID_RE.fullmatch(source)) and not Path(source).expanduser().exists()


def short_source(source: str) -> str:
    """A local path shown by its name only (a public card; the path says nothing there)."""
    return source if is_hub_id(source) else Path(source).name


def _gib(n: Any) -> str:
    from planner.gpus import format_gib

    return format_gib(n, 2) if isinstance(n, int) else "-"


def _fixed(value: float | None, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def model_card(run_dir: Path, config: RunConfig, *, load_from: str, public: bool, base_model: str | None = None,
               merged: bool = False, steps: int | None = None, final_loss: float | None = None,
               notes: Sequence[str] = ()) -> str:
    """The README.md of a run's model: YAML metadata, then what the run was and what it measured.

    `load_from`: what the usage snippet loads (the Hub repository, or the local folder);
    `public`: local paths are named by their last part (a card for the Hub) instead of in full;
    `base_model`: the base's Hub id (None: the run's model source when it is one); `merged`: the
    adapter merged into its base; `steps`/`final_loss`: the trainer's own figures when the caller
    has them (else the run's status)."""
    import tomli_w
    from huggingface_hub import ModelCard, ModelCardData

    from tuneplan import __version__
    from tuneplan.dataset_formats import is_local_source
    from tuneplan.services.presets import evidence_from_run

    run_dir = Path(run_dir)
    s = config.setup
    whole_model = merged or s.method == "full"
    shown = short_source if public else str
    base_model = base_model or (config.model.source if is_hub_id(config.model.source) else None)
    evidence, _ = evidence_from_run(run_dir)
    steps = steps if steps is not None else evidence.steps
    final_loss = final_loss if final_loss is not None else evidence.final_loss
    evals = [e for e in read_events(run_dir) if isinstance(e, EvalEvent)]
    eval_loss = evals[-1].eval_loss if evals else None
    dataset = config.data.source
    hub_dataset = None if is_local_source(dataset) or dataset.startswith("tuneplan:") else dataset

    tags = ["tuneplan", "trl", "sft", "transformers"]
    if whole_model:
        library = "transformers"
        tags += [f"base_model:finetune:{base_model}"] if base_model else []
    else:
        library = "peft"
        tags += ["lora"] + (["qlora"] if s.method == "qlora" else [])
        tags += [f"base_model:adapter:{base_model}"] if base_model else []
    data = ModelCardData(base_model=base_model, library_name=library, pipeline_tag="text-generation", tags=tags,
                         datasets=[hub_dataset] if hub_dataset else None)

    what = ("a LoRA adapter merged into its base model" if merged else
            "a full fine-tune" if s.method == "full" else
            f"a {'QLoRA' if s.method == 'qlora' else 'LoRA'} adapter")
    base_text = (f"[`{base_model}`](https://huggingface.co/{base_model})" if base_model
                 else f"`{shown(config.model.source)}`")
    dataset_text = (f"[`{hub_dataset}`](https://huggingface.co/datasets/{hub_dataset})" if hub_dataset
                    else f"`{shown(dataset)}` (local file)")
    method = s.method + (f" ({s.quant_type} 4-bit base, merged into the 16-bit base)" if merged and s.method == "qlora"
                         else f" ({s.quant_type} 4-bit base, double quant {s.double_quant})" if s.method == "qlora"
                         else "")
    targets = s.lora_targets if isinstance(s.lora_targets, str) else ", ".join(s.lora_targets)
    lora = [] if s.method == "full" else [
        f"- LoRA: rank {s.lora_rank}, alpha {s.lora_alpha}, dropout {s.lora_dropout}, targets {targets}"]
    measured = [
        f"| steps | {steps if steps is not None else '-'} |",
        f"| final training loss | {_fixed(final_loss, '.4f')} |",
        f"| eval loss | {_fixed(eval_loss, '.4f')} |",
        f"| tokens/s (median of the log) | {_fixed(evidence.tokens_per_second, '.0f') if evidence.tokens_per_second else '-'} |",
        f"| GPU | {evidence.gpu_name or '-'} |",
        f"| peak memory, `max_memory_allocated` | {_gib(evidence.peak_memory_bytes)} |",
        f"| peak memory, `max_memory_reserved` | {_gib(evidence.peak_reserved_bytes)} |",
        f"| predicted by tuneplan (nvidia-smi) | {_gib(config.prediction.device_bytes)} |",
    ]
    where = json.dumps(load_from)  # a Python string literal in double quotes
    load = (["from transformers import AutoModelForCausalLM, AutoTokenizer",
             f"model = AutoModelForCausalLM.from_pretrained({where})"] if whole_model else
            ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer",
             f"model = AutoPeftModelForCausalLM.from_pretrained({where})"])
    usage = ["```python", *load, f"tokenizer = AutoTokenizer.from_pretrained({where})", "```"]
    if not public:
        usage = [f"`tuneplan chat RUN` talks to it; `tuneplan export RUN` turns it into an Ollama, vLLM or "
                 f"safetensors model{'' if whole_model else ' (merged)'}. With {library}:", "", *usage]
    table = {k: v for k, v in config_to_dict(config).items() if k not in ("debug", "notify", "prediction", "resume_from")}
    table["model"] = {**table.get("model", {}), "source": base_model or shown(config.model.source)}
    table["data"] = {**table.get("data", {}), "source": shown(dataset)}
    body = [
        f"# {config.name or run_dir.name}", "",
        f"{what[0].upper() + what[1:]} of {base_text}, fine-tuned with [tuneplan](https://pypi.org/project/tuneplan/) "
        f"{__version__} (trl SFTTrainer{'' if s.method == 'full' else ', peft'}).", "",
        f"- dataset: {dataset_text}",
        f"- method: {method}",
        *lora,
        f"- batch: micro-batch {s.micro_batch} x accumulation {s.grad_accum} x GPUs {s.num_gpus} = effective "
        f"{s.effective_batch()} sequences of up to {s.seq_len} tokens (packing {s.packing})",
        f"- optimizer {s.optimizer}, learning rate {config.training.learning_rate:g} ({config.training.lr_scheduler}), "
        f"{s.compute_dtype}", "",
        "## Results", "", "| measured | |", "| --- | --- |", *measured, "",
        *(_evaluation(run_dir) if public else []),  # the run's own card gets it from `tuneplan eval`
        "## Use", "", *usage, "",
    ]
    if notes:
        body += ["## Notes from the run", "", *(f"- {n}" for n in notes), ""]
    body += [
        "## Training configuration", "",
        "The run's resolved configuration (`tuneplan train --config` reads it"
        + ("; local files are named, not located):" if public else "):"),
        "", "```toml", tomli_w.dumps(table).rstrip(), "```", "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)).content


def _evaluation(run_dir: Path) -> list[str]:
    """The card's evaluation section from `RUN/eval.json` (`tuneplan eval`), when the run has one."""
    from tuneplan.services.eval_results import card_section, read_eval

    report = read_eval(run_dir)
    return [*card_section(report), ""] if report is not None else []
