"""A tiny Llama-style model with an offline tokenizer, for tests, benchmarks and the demo.

`build_tiny_model(dir)` writes a complete model folder (config.json, random weights in
safetensors, a byte-level BPE tokenizer trained on the bundled sample dataset, with a chat
template) that `AutoModelForCausalLM` / `AutoTokenizer` load without the Hub. The model's
shape comes from `tuneplan/data/tiny_llama_config.json` (hidden 64, 2 layers, 512 tokens), so
the planner can plan it like any other model. Deterministic: same seed, same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneplan.data import SAMPLE_CHAT, TINY_MODEL_CONFIG

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
# A plain chat template: each turn is `<|role|>\n content </s>\n`; a generation prompt opens
# the assistant turn. trl's prompt/completion tokenization relies on the prompt rendering
# being a prefix of the full conversation, which this template keeps.
# The `{% generation %}` markers let trl train on every assistant turn of a conversation.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '</s>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '</s>' }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    texts = []
    for line in SAMPLE_CHAT.read_text(encoding="utf-8").splitlines():
        for message in json.loads(line)["messages"]:
            texts.append(message["content"])
    return texts


def build_tokenizer(vocab_size: int):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on the sample dataset (any text
    encodes: unseen characters fall back to bytes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   additional_special_tokens=SPECIAL_TOKENS[3:])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(directory: str | Path, *, seed: int = 0) -> Path:
    """Write the tiny model (config, random weights, tokenizer) into `directory`; return it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    spec = json.loads(TINY_MODEL_CONFIG.read_text(encoding="utf-8"))
    tokenizer = build_tokenizer(spec["vocab_size"])
    spec.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model_type = spec.pop("model_type")
    spec.pop("torch_dtype", None)
    config = AutoConfig.for_model(model_type, **spec)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":  # `python -m tuneplan.training.tiny DIR`: how the services layer builds it
    import sys

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    build_tiny_model(sys.argv[1])
