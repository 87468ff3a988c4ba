"""Steps 4-5 of the training-path contract: the trl `SFTTrainer` our runs use.

`tuneplan/training/modeling.py` builds the model (steps 1-3); this module wraps it in the
trainer. The planner (`planner/memory.py`) predicts exactly this path and
`docs/training-path.md` documents it; a change here must be agreed in both places.

4. trl `SFTTrainer` with mixed precision from the setup's compute dtype (`bf16=True` for
   bfloat16, `fp16=True` for float16, neither for float32), the optimizer mapped
   `adamw`->`adamw_torch`, `adamw-8bit`->`adamw_bnb_8bit`, `paged-adamw-8bit`->
   `paged_adamw_8bit`, `paged-adamw-32bit`->`paged_adamw_32bit`, micro-batch, gradient
   accumulation and sequence length (`max_length`) from the setup. `packing=True` -> trl's
   best-fit-decreasing packing, which is padding-free (one flattened row per micro-batch,
   documents kept apart by `position_ids`), except with eager attention and micro-batches of
   several rows: eager attention computes scores over the whole flattened row, (batch x
   seq)^2 per head, so those runs pack with trl's `wrapped` strategy instead (rows of exactly
   `seq_len` tokens, scores batch x seq^2; documents in a row attend to each other, as in
   trl's classic packing); `packing=False` -> rows padded to the longest in
   the micro-batch, truncated at `seq_len`. Checkpointing is already enabled by step 2
   (non-reentrant); the trainer is told the same so that it re-applies the same kwargs.
   Checkpoints every `training.save_steps` keeping `training.save_total_limit` (with
   optimizer state, so `resume` continues exactly). Eval loss on the held-out split.
5. Loss. trl 1.16's `SFTTrainer` always patches the model with its own chunked "fused LM
   head" (`trl.trainer.utils.add_fused_lm_head`): the loss is computed from the hidden
   states in tiles of 32768 tokens without materialising the `(batch, seq, vocab)` logits,
   and it REFUSES Liger's `fused_linear_cross_entropy` (ValueError in `SFTTrainer.__init__`).
   So, with this trl:
   - `fused_ce=True`  -> trl's chunked fused LM head (works on CPU and CUDA; no Liger, no
     fallback needed). It also computes per-token entropy and top-1 for trl's metrics,
     inside the same tiles (no full logits).
   - `fused_ce=False` -> transformers' own loss: the model is called with `labels`
     (`logits.float()` + cross-entropy), exactly as `Trainer.compute_loss` does. This is
     the path the planner's `logits_fp32` terms model.
   Completion-only loss: chat and prompt/completion data become conversational
   prompt/completion rows (`tuneplan.dataset_formats`), so trl masks the prompt
   (`completion_only_loss`) unless `data.completion_only_loss` is false. Datasets with
   multi-turn conversations whose template can mark assistant spans stay whole
   conversations (`messages` rows) trained with `assistant_only_loss` (every assistant turn).

6. Long context (training/long_context.py): `offload_activations` -> trl's
   `activation_offloading` (pinned host RAM, a second CUDA stream; on the CPU the same manager
   built for the CPU device); `tiled_mlp` is applied by modeling.py.

Known library behaviour (not ours, documented in docs/training-path.md by modeling.py's
owner): trl casts the trainable parameters of a 4-bit model to bf16 in `__init__`.
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any

from tuneplan.config import RunConfig

log = logging.getLogger("tuneplan.training")

# TrainSetup.optimizer -> transformers `optim` names (contract step 4).
OPTIMIZERS = {
    "adamw": "adamw_torch",
    "adamw-8bit": "adamw_bnb_8bit",
    "paged-adamw-8bit": "paged_adamw_8bit",
    "paged-adamw-32bit": "paged_adamw_32bit",
}


def packing_strategy(setup, attn_implementation: str | None) -> str:
    """trl's packing strategy for `setup`: `bfd` (padding-free), or `wrapped` when eager
    attention would score a flattened micro-batch of several rows as one long sequence
    (trl sft_trainer.py: `bfd` implies `padding_free`, which concatenates the micro-batch;
    transformers masking_utils.py `find_packed_sequence_indices` then masks one row of
    batch x seq tokens, and eager attention materialises all of its scores)."""
    if attn_implementation == "eager" and setup.micro_batch > 1:
        return "wrapped"
    return "bfd"


def sft_config(run_config: RunConfig, *, output_dir: str | None = None, has_eval: bool = False,
               completion_only: bool | None = None, assistant_only: bool = False,
               attn_implementation: str | None = None):
    """The `trl.SFTConfig` for a run (contract step 4). `output_dir=None` -> no checkpoints
    (a temporary folder is used for trl's bookkeeping)."""
    from trl import SFTConfig

    from tuneplan.training.long_context import effective_setup

    s, t = effective_setup(run_config.setup), run_config.training  # offloading implies checkpointing
    saving = output_dir is not None
    if output_dir is None:
        output_dir = tempfile.mkdtemp(prefix="tuneplan-trainer-")
    if has_eval:
        eval_strategy = "steps" if t.eval_steps else "epoch"
    else:
        eval_strategy = "no"
    return SFTConfig(
        output_dir=output_dir,
        # batch geometry (the planner's knobs)
        per_device_train_batch_size=s.micro_batch,
        per_device_eval_batch_size=t.eval_batch or s.micro_batch,
        gradient_accumulation_steps=s.grad_accum,
        max_length=s.seq_len,
        packing=s.packing,
        packing_strategy=packing_strategy(s, attn_implementation),
        padding_free=False,  # implied by bfd packing; off without packing (needs flash-attention)
        gradient_checkpointing=s.grad_checkpointing,
        # long context: trl's offloading of saved tensors to pinned host RAM on CUDA; on the CPU
        # build_trainer installs the same manager itself (training/long_context.py)
        activation_offloading=bool(s.offload_activations) and _cuda_available(),
        gradient_checkpointing_kwargs={"use_reentrant": False} if s.grad_checkpointing else None,
        bf16=s.compute_dtype == "bfloat16",
        fp16=s.compute_dtype == "float16",
        optim=OPTIMIZERS[s.optimizer],
        # loss
        completion_only_loss=completion_only,
        assistant_only_loss=assistant_only,
        # hyperparameters
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio of the total steps (transformers 5)
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps is not None else -1,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        # logging, eval, checkpoints
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        # the Trainer's default filter logs a NaN/inf step as the window's mean of the finite ones
        # (0.0 when all are NaN: `Trainer._inner_training_loop`); the run must see the real value
        # (it stops on it, and the NaN alert reports it)
        logging_nan_inf_filter=False,
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps,
        save_strategy="steps" if saving else "no",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        # the trainer's own tracker integration (`training.report_to`; training/tracking.py adds the plan)
        report_to=t.report_to,
        run_name=run_config.name,
        project="tuneplan",  # trackio's project name (transformers `TrainingArguments.project`)
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=_cuda_available(),
        # Without CUDA the Trainer refuses bf16 unless told it runs on the CPU (CPU autocast).
        use_cpu=not _cuda_available(),
    )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _trainer_class():
    from transformers import Trainer
    from trl import SFTTrainer

    from tuneplan.training.checkpoints import AtomicCheckpoints

    class TuneplanSFTTrainer(AtomicCheckpoints, SFTTrainer):
        """`SFTTrainer` with contract step 5's `fused_ce=False` path (transformers' loss) and
        checkpoints that are published whole or not at all (`checkpoints.AtomicCheckpoints`)."""

        fused_ce: bool = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.fused_ce:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs["use_cache"] = False
            if self.model.training:  # keep trl's `num_tokens` metric (tokens/s in the events)
                if "attention_mask" in inputs:
                    self._total_train_tokens += int(inputs["attention_mask"].sum().item())
                elif "position_ids" in inputs:
                    self._total_train_tokens += int(inputs["position_ids"].size(1))
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            # Trainer.compute_loss: model(**inputs) with labels -> logits.float() + cross-entropy
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return TuneplanSFTTrainer


def build_trainer(run_config: RunConfig, model, tokenizer, train_ds, eval_ds=None, callbacks=None, *,
                  output_dir: str | None = None):
    """The trainer of contract steps 4-5 around a model from `modeling.load_for_training`.

    `train_ds` / `eval_ds` are `datasets.Dataset`s in trl's shapes: conversational
    prompt/completion rows or `text` rows (see `tuneplan.training.data`). The tokenizer gets
    a pad token (its eos) when it has none. `output_dir` holds the checkpoints (`None`: no
    checkpoints, e.g. for the memory trace)."""
    if getattr(tokenizer, "pad_token", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    columns = set(train_ds.column_names)
    chat = "prompt" in columns and "completion" in columns
    completion_only = run_config.data.completion_only_loss if chat else None
    # whole conversations (`messages` rows, see training/data.py): loss on every assistant turn
    assistant_only = "messages" in columns and run_config.data.completion_only_loss
    args = sft_config(run_config, output_dir=output_dir, has_eval=eval_ds is not None and len(eval_ds) > 0,
                      completion_only=completion_only, assistant_only=assistant_only,
                      attn_implementation=getattr(model.config, "_attn_implementation", None))
    if run_config.setup.packing and args.packing_strategy == "wrapped":
        log.info("packing: eager attention with %d rows per micro-batch packs rows of %d tokens (trl 'wrapped'); "
                 "padding-free packing would score the flattened micro-batch as one sequence",
                 run_config.setup.micro_batch, run_config.setup.seq_len)
    cls = _trainer_class()
    trainer = cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds if eval_ds is not None and len(eval_ds) > 0 else None,
        processing_class=tokenizer,
        callbacks=list(callbacks or []),
    )
    trainer.fused_ce = run_config.setup.fused_ce
    if run_config.setup.offload_activations:
        if not args.activation_offloading:  # the CPU: trl's manager, built for the CPU device
            from tuneplan.training.long_context import offload_manager

            trainer.maybe_activation_offload_context = offload_manager(trainer.model)
        log.info("activation offloading: saved tensors (the checkpointed layer inputs) go to host RAM%s",
                 " (pinned, on a second CUDA stream)" if args.activation_offloading
                 else " (CPU: a copy in the same RAM, same code path)")
    if output_dir is not None:
        from pathlib import Path

        trainer.run_dir = Path(output_dir).parent
        trainer.save_sleep_seconds = run_config.debug.save_sleep_seconds
    log.info("loss: %s", "trl chunked fused LM head (no full logits)" if trainer.fused_ce
             else "transformers loss (full fp32 logits)")
    return trainer


def optimizer_name(setup) -> str:
    """The transformers `optim` name for a setup's optimizer."""
    return OPTIMIZERS[setup.optimizer]


__all__: list[Any] = ["build_trainer", "sft_config", "OPTIMIZERS", "optimizer_name"]
