"""The run's plan in the experiment tracker's config (`training.report_to`).

The trainer's own integration (`transformers/integrations/integration_utils.py`) logs the
metrics and its `TrainingArguments`; this adds what only tuneplan knows: the run name, the
resolved run configuration and the planner's predicted memory. `PlanToTrackerCallback` is
added after the integration callbacks, so their `on_train_begin` (which opens the tracker's
run) has already happened when it writes. TensorBoard's event files go to `RUN/tensorboard`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tuneplan.config import RunConfig, config_to_dict
from tuneplan.events import TENSORBOARD_DIR

log = logging.getLogger("tuneplan.training")
PLAN_TAG = "tuneplan/plan"
"""The TensorBoard text tag (and the key prefix elsewhere) the plan is written under."""


def plan_dict(config: RunConfig) -> dict[str, Any]:
    """The run name, its resolved configuration and the predicted memory (bytes)."""
    data = {k: v for k, v in config_to_dict(config).items() if k not in ("debug", "notify", "prediction")}
    p = config.prediction
    return {"run_name": config.name, "config": data,
            "predicted_memory": {"torch_peak_bytes": p.torch_peak_bytes, "device_bytes": p.device_bytes}}


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}` (mlflow params are flat)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        else:
            out[key] = v
    return out


def prepare_environment(run_dir: Path, config: RunConfig) -> None:
    """Before the trainer is built: TensorBoard writes into the run directory
    (`TensorBoardCallback` reads `TENSORBOARD_LOGGING_DIR`)."""
    if config.training.report_to == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(run_dir) / TENSORBOARD_DIR)


class PlanToTrackerCallback(TrainerCallback):
    def __init__(self, trainer, config: RunConfig):
        self.trainer = trainer
        self.report_to = config.training.report_to
        self.plan = plan_dict(config)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        try:
            self._write()
        except Exception as exc:  # the tracker is a convenience: never fail the run for it
            log.warning("could not write the plan to %s: %s", self.report_to, exc)

    def _write(self) -> None:
        text = json.dumps(self.plan, indent=1, default=str)
        if self.report_to == "tensorboard":
            from transformers.integrations import TensorBoardCallback

            for cb in self.trainer.callback_handler.callbacks:
                if isinstance(cb, TensorBoardCallback) and cb.tb_writer is not None:
                    cb.tb_writer.add_text(PLAN_TAG, f"```json\n{text}\n```")
                    cb.tb_writer.flush()
        elif self.report_to == "trackio":
            import trackio

            trackio.config.update({"tuneplan": self.plan}, allow_val_change=True)
        elif self.report_to == "wandb":
            import wandb

            if wandb.run is not None:
                wandb.run.config.update({"tuneplan": self.plan}, allow_val_change=True)
        elif self.report_to == "mlflow":
            import mlflow

            # mlflow params hold at most 500 characters each (`mlflow.utils.validation`)
            mlflow.log_params({f"tuneplan.{k}": str(v)[:500] for k, v in flat(self.plan).items()})
            mlflow.log_dict(self.plan, "tuneplan_plan.json")


def eval_metrics(report) -> dict[str, float]:
    """`tuneplan eval`'s numbers, flat: `eval/base/loss`, `eval/tuned/rouge_l`, `eval/tuned/TASK/METRIC`
    (`eval_data/...` for the loss and answers of `tuneplan eval --data`, rows that are not the held-out split)."""
    out: dict[str, float] = {}
    # rows of `tuneplan eval --data` are not the held-out split: their loss gets its own names
    prefix = "eval_data" if getattr(report, "on_other_data", False) else "eval"
    for side, scores in (("base", report.base), ("tuned", report.adapter)):
        for key in ("loss", "perplexity", "exact_match", "token_f1", "rouge_l"):
            value = getattr(scores, key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                out[f"{prefix}/{side}/{key}"] = float(value)
        for task, metrics in scores.tasks.items():
            for metric, value in metrics.items():
                out[f"eval/{side}/{task}/{metric}"] = float(value)
    return out


def log_evaluation(run_dir: Path, config: RunConfig, report) -> None:
    """`tuneplan eval`'s results in the run's tracker (`training.report_to`), after training:
    TensorBoard scalars and a text table in `RUN/tensorboard`; for trackio, W&B and MLflow a
    run of the same name in project "tuneplan" (the trainer's run cannot be reopened from here)."""
    report_to = config.training.report_to
    if report_to == "none":
        return
    metrics = eval_metrics(report)
    name = config.name or Path(run_dir).name
    from tuneplan.events import read_status
    from tuneplan.services.eval_results import table_lines

    status = read_status(run_dir)
    step = status.step if status is not None else 0
    if report_to == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR / "eval"))
        try:
            for key, value in metrics.items():
                writer.add_scalar(key, value, step)
            scored = f"scored: {report.data_label()}\n\n" if getattr(report, "on_other_data", False) else ""
            writer.add_text("tuneplan/eval", scored + "```\n" + "\n".join(table_lines(report)) + "\n```", step)
        finally:
            writer.close()
    elif report_to == "trackio":
        import trackio

        trackio.init(project="tuneplan", name=f"{name}-eval", config={"tuneplan_run": name})
        trackio.log(metrics, step=step)
        trackio.finish()
    elif report_to == "wandb":
        import wandb

        run = wandb.init(project="tuneplan", name=f"{name}-eval", job_type="eval", group=name)
        run.log(metrics, step=step)
        run.finish()
    elif report_to == "mlflow":
        import mlflow

        with mlflow.start_run(run_name=f"{name}-eval"):
            mlflow.log_metrics({k.replace("/", "."): v for k, v in metrics.items()}, step=step)
            mlflow.log_dict(report.to_dict(), "tuneplan_eval.json")
