"""A hand-made `tuneplan eval` report for the tests that write, read and show `RUN/eval.json`
(its numbers are inputs to formatting, not measured results)."""

from __future__ import annotations

import math

from tuneplan.services import eval_results


def sample_report(run: str = "r", loss: tuple[float, float] = (2.0, 1.0)) -> eval_results.EvalReport:
    """A small report with both sides, generation metrics, one task and one example."""
    base = eval_results.ModelScores(loss=loss[0], perplexity=math.exp(loss[0]), scored_tokens=10, exact_match=0.0,
                                    token_f1=0.1, rouge_l=0.1, generated=2)
    tuned = eval_results.ModelScores(loss=loss[1], perplexity=math.exp(loss[1]), scored_tokens=10, exact_match=0.5,
                                     token_f1=0.6, rouge_l=0.7, generated=2, tasks={"t": {"acc": 0.25}})
    return eval_results.EvalReport(run=run, base_model="m", weights="adapter", method="lora", data_format="chat",
                                   held_out_examples=2, base=base, adapter=tuned,
                                   examples=[eval_results.GenerationExample("q", "a", "b", "a")], tasks=["t"])
