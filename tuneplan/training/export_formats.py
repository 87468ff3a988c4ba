"""Serving formats for a trained run: an Ollama Modelfile and the vLLM command line.

- Ollama (`https://github.com/ollama/ollama/blob/main/docs/modelfile.md`, `docs/import.md`,
  `docs/template.md`): a Modelfile whose `FROM` is a folder of safetensors (Ollama imports
  safetensors of Llama, Mistral, Gemma and Phi-3 architectures, among others, and quantizes
  them with `ollama create -q q4_K_M`), a `TEMPLATE` in Go template syntax over `.Messages`
  (`.Role`, `.Content`), and `PARAMETER stop` for the end-of-turn text.
- vLLM (`vllm serve --enable-lora --max-lora-rank R --lora-modules NAME=PATH`, vLLM's LoRA
  docs): the adapter is served as is on the base model.

The Ollama template is derived from the run's own chat template (saved with the adapter) by
rendering sentinel conversations and cutting out the text around each role's content. Chat
templates with logic Ollama's per-role template cannot express (turn numbering, content
rewriting) fail the round-trip check, and then the Modelfile carries no TEMPLATE (Ollama picks
its own for the architectures it knows) and the output says so.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

VLLM_MAX_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""`--max-lora-rank` values vLLM accepts (`vllm/config/lora.py`, `LoRAConfig.max_lora_rank`)."""

_S, _U, _A, _U2 = "\x01SYS\x01", "\x01USR\x01", "\x01ASST\x01", "\x01USR2\x01"


@dataclass(frozen=True)
class ChatPieces:
    """The text around each role's content in a chat template (BOS left to the runtime)."""

    head: str
    """What comes first when the conversation has no system message (e.g. a default system prompt)."""
    system_prefix: str
    system_suffix: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str

    def render(self, messages: list[dict], *, generation_prompt: bool = True) -> str:
        """The prompt the Ollama template below produces (used for the round-trip check)."""
        out = "" if messages and messages[0]["role"] == "system" else self.head
        for m in messages:
            pre, suf = {"system": (self.system_prefix, self.system_suffix),
                        "user": (self.user_prefix, self.user_suffix),
                        "assistant": (self.assistant_prefix, self.assistant_suffix)}[m["role"]]
            out += pre + m["content"] + suf
        return out + (self.assistant_prefix if generation_prompt else "")

    def go_template(self) -> str:
        """The Ollama TEMPLATE (Go text/template over `.Messages`)."""
        def lit(text: str) -> str:  # a literal in Go template syntax, safe for any characters
            return "{{ " + _go_string(text) + " }}" if text else ""

        head = "{{- if ne (index .Messages 0).Role \"system\" }}" + lit(self.head) + "{{ end }}" if self.head else ""
        return (head + "{{- range .Messages }}"
                "{{- if eq .Role \"system\" }}" + lit(self.system_prefix) + "{{ .Content }}" + lit(self.system_suffix) +
                "{{- else if eq .Role \"user\" }}" + lit(self.user_prefix) + "{{ .Content }}" + lit(self.user_suffix) +
                "{{- else if eq .Role \"assistant\" }}" + lit(self.assistant_prefix) + "{{ .Content }}"
                + lit(self.assistant_suffix) +
                "{{- end }}{{- end }}" + lit(self.assistant_prefix))


def _go_string(text: str) -> str:
    """A Go interpreted string literal."""
    out = []
    for ch in text:
        if ch in "\\\"":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 32:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _split(text: str, marker: str) -> tuple[str, str]:
    if text.count(marker) != 1:
        raise ValueError(f"the template does not show the content once ({text.count(marker)} times)")
    before, after = text.split(marker)
    return before, after


def chat_pieces(tokenizer) -> ChatPieces:
    """Derive the per-role pieces from a tokenizer's chat template, and check them: the pieces
    must reproduce the template's output for a multi-turn conversation with and without a
    system message. Raises ValueError when they cannot."""
    def render(messages, gen=False):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        bos = getattr(tokenizer, "bos_token", None)
        return text[len(bos):] if bos and text.startswith(bos) else text  # the runtime adds BOS

    u, a = {"role": "user", "content": _U}, {"role": "assistant", "content": _A}
    u2 = {"role": "user", "content": _U2}
    r_u, r_ua, r_uau = render([u]), render([u, a]), render([u, a, u2])
    r_ug = render([u], gen=True)
    if not (r_ua.startswith(r_u) and r_uau.startswith(r_ua) and r_ug.startswith(r_u)):
        raise ValueError("the template's turns are not a prefix of the longer conversation")
    user_prefix, user_suffix = _split(r_uau[len(r_ua):], _U2)
    assistant_prefix, assistant_suffix = _split(r_ua[len(r_u):], _A)
    head, rest = _split(r_u, _U)
    if not head.endswith(user_prefix) or rest != user_suffix:
        raise ValueError("the first user turn differs from the others")
    head = head[:len(head) - len(user_prefix)]
    s = {"role": "system", "content": _S}
    r_su = render([s, u])
    if not r_su.endswith(user_prefix + _U + user_suffix):
        raise ValueError("the system message changes the user turn")
    system_prefix, system_suffix = _split(r_su[:len(r_su) - len(user_prefix + _U + user_suffix)], _S)
    pieces = ChatPieces(head, system_prefix, system_suffix, user_prefix, user_suffix, assistant_prefix, assistant_suffix)
    gen_prompt = r_ug[len(r_u):]
    if gen_prompt != assistant_prefix:
        raise ValueError("the generation prompt is not the assistant turn's opening")
    for conv in ([u, a, u2], [s, u, a, u2], [s, u], [u]):
        if pieces.render(conv) != render(conv, gen=True):
            raise ValueError("the derived template does not reproduce the chat template")
    return pieces


def stop_words(tokenizer, pieces: ChatPieces | None) -> list[str]:
    """End-of-turn texts: the assistant turn's closing marker and the EOS token."""
    out = []
    if pieces is not None and pieces.assistant_suffix.strip():
        out.append(pieces.assistant_suffix.strip())
    eos = getattr(tokenizer, "eos_token", None)
    if eos and eos not in out:
        out.append(eos)
    return out


def write_modelfile(out: Path, weights: Path, tokenizer) -> tuple[Path, str | None]:
    """Write `out/Modelfile` (FROM the safetensors folder); returns (path, a note when the chat
    template could not be translated)."""
    note = None
    try:
        pieces = chat_pieces(tokenizer) if getattr(tokenizer, "chat_template", None) else None
        if pieces is None:
            note = "the tokenizer has no chat template: the Modelfile has no TEMPLATE"
    except ValueError as exc:
        pieces, note = None, (f"the chat template cannot be written as an Ollama template ({exc}); the Modelfile "
                              "has no TEMPLATE, so Ollama uses its own for a known architecture: check it")
    # relative to the Modelfile's folder (the printed commands `cd` there first), so the export
    # names no absolute path of this machine and moves with the run folder
    frm = os.path.relpath(Path(weights).resolve(), Path(out).resolve())
    lines = ["# Ollama Modelfile written by `tuneplan export --format ollama`", f"FROM {frm}"]
    if pieces is not None:
        template = pieces.go_template()
        lines.append(f'TEMPLATE """{template}"""')
    for word in stop_words(tokenizer, pieces):
        lines.append(f"PARAMETER stop {_go_string(word)}")
    path = Path(out) / "Modelfile"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, note


def ollama_commands(out: Path, name: str, *, quantize: str | None = "q4_K_M") -> list[str]:
    """The commands that import and run the model in Ollama."""
    q = f" -q {shlex.quote(quantize)}" if quantize else ""
    return [f"cd {shlex.quote(str(out))}", f"ollama create {shlex.quote(name)} -f Modelfile{q}",
            f"ollama run {shlex.quote(name)}"]


def model_context(source: str | Path) -> int | None:
    """The context length (tokens) of a model: its `config.json` in a local folder, the
    catalog's copy for a catalog name, or the local Hub cache's for a Hub id; None when none of
    these has it (nothing is downloaded)."""
    from planner.spec import spec_from_config

    config: dict | None = None
    folder = Path(source)
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    else:
        from planner import catalog

        entry = catalog.find(str(source))
        if entry is not None:
            return entry.spec().max_position_embeddings
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(source), "config.json")
        except Exception:  # not a repo id: no cached config
            cached = None
        if isinstance(cached, str):
            config = json.loads(Path(cached).read_text(encoding="utf-8"))
    if not config:
        return None
    try:
        return spec_from_config(config, str(source)).max_position_embeddings
    except (ValueError, KeyError, TypeError):
        return None


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that holds the adapter's rank."""
    for r in VLLM_MAX_LORA_RANKS:
        if r >= rank:
            return r
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest --max-lora-rank ({VLLM_MAX_LORA_RANKS[-1]})")


def vllm_command(base: str, adapter: Path | None, name: str, rank: int | None, *, dtype: str | None = None,
                 max_model_len: int | None = None, trust_remote_code: bool = False) -> str:
    """`vllm serve BASE --enable-lora --max-lora-rank R --lora-modules NAME=PATH` (no adapter:
    `vllm serve MODEL`)."""
    parts = ["vllm", "serve", base]
    if adapter is not None and rank is not None:
        parts += ["--enable-lora", "--max-lora-rank", str(vllm_max_lora_rank(rank)),
                  "--lora-modules", f"{name}={Path(adapter).resolve()}"]
    if dtype:
        parts += ["--dtype", dtype]
    if max_model_len:
        parts += ["--max-model-len", str(max_model_len)]
    if trust_remote_code:
        parts.append("--trust-remote-code")
    return " ".join(shlex.quote(p) for p in parts)
