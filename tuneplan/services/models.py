"""Model resolution: a catalog name, a local folder or a Hub id -> an exact `ModelSpec`.

`resolve_model(ref, *, token=None, trust_remote_code=False, hub=None) -> ResolvedModel`
tries, in order:

1. an explicit path (`./x`, `../x`, `/x`, `~/x`) -> a local folder (or a `config.json` file);
2. a catalog name, alias or the Hub id of a catalog entry (offline, exact; `planner.catalog`);
3. an existing folder -> local (it must hold `config.json`);
4. `owner/name` -> the Hugging Face Hub: `config.json` only, via
   `huggingface_hub.hf_hub_download` (cached under the HF cache; with `token=None` the
   library uses `HF_TOKEN` or the saved login; `HF_HUB_OFFLINE=1` serves the cache only).
   Where the Hub's API lists safetensors metadata, its parameter count is compared with the
   spec's exact count and a mismatch is reported in `notes` (never an error).
5. anything else -> unknown catalog name, with close names suggested.

Every failure is a `tuneplan.errors.UserError` with one line naming the thing and the fix:
gated repo without access, repo not found, offline / unreachable Hub, folder without
`config.json`, unknown catalog name, unsupported architecture. The Hub token is passed
through to `huggingface_hub` and never stored or printed. No model code runs here:
`trust_remote_code` is only recorded for the training process.

No textual, no torch: `huggingface_hub` is imported lazily on first Hub access. Tests swap
the Hub boundary by passing `hub=` (an object with `hf_hub_download` and `model_info`) or by
patching those two functions of the `huggingface_hub` module.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from planner import catalog
from planner.spec import SUPPORTED_MODEL_TYPES, ModelSpec, UnsupportedArchitecture, spec_from_config
from tuneplan.data import TINY_MODEL, TINY_MODEL_CONFIG
from tuneplan.errors import UserError, check_path
from tuneplan.services.hub import hub_offline_mode

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
"""`owner/name` as the Hub accepts it (huggingface_hub `validate_repo_id` checks the rest)."""

PARAMETER_MISMATCH_TOLERANCE = 0.0
"""Relative difference between the Hub's safetensors count and the spec's count above which
a note is added. The spec is exact for unquantized checkpoints, so any difference is shown."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model the planner can plan for, and where the trainer will load it from."""

    spec: ModelSpec
    """The exact architecture spec."""
    kind: str
    """Where it was found: `catalog`, `local` or `hub`."""
    source: str
    """What training passes to `from_pretrained`: the Hub id, or the local folder path."""
    name: str
    """Display name (catalog name, Hub id or folder name)."""
    config: Mapping[str, Any]
    """The raw `config.json` dict (read-only)."""
    hub_id: str | None = None
    """Hugging Face repo id (catalog and Hub models); None for local folders."""
    local_path: Path | None = None
    """The folder holding `config.json` (local models only)."""
    license: str | None = None
    """Licence id when known (catalog entry or Hub card); None when unknown."""
    gated: bool | None = None
    """Whether the Hub repo is gated (terms to accept, token needed); None when unknown."""
    hub_parameters: int | None = None
    """Parameter count from the Hub's safetensors metadata, when the Hub offered it."""
    trust_remote_code: bool = False
    """Whether the user allowed the repo's own modeling code (training only; never run here)."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """One-line remarks to show the user (multimodal checkpoint, count mismatch, ...)."""

    @property
    def tokenizer_source(self) -> str:
        """Where the tokenizer comes from (same place as the weights)."""
        return self.source


# -- entry point --------------------------------------------------------------------------
def resolve_model(
    ref: str,
    *,
    token: str | None = None,
    trust_remote_code: bool = False,
    hub: Any = None,
    check_hub_parameters: bool = True,
) -> ResolvedModel:
    """Resolve `ref` (catalog name, local folder or Hub id) to a `ResolvedModel`.

    `token`: Hub token (None: huggingface_hub's default, i.e. `HF_TOKEN` or the saved login).
    `hub`: the Hub boundary, an object with `hf_hub_download(repo_id, filename, token=...)`
    and `model_info(repo_id, expand=..., token=..., timeout=...)` (None: `huggingface_hub`).
    `check_hub_parameters`: ask the Hub API for safetensors metadata (one extra request,
    skipped offline). Blocking (may use the network): call it from a worker in the UI.
    Raises `UserError` with a one-line message.
    """
    kind, text, found = _locate_model(ref)
    if kind == "local":
        return _resolve_local(found, trust_remote_code, shown=text)
    if kind == "tiny":
        return _resolve_bundled_tiny(trust_remote_code)
    if kind == "catalog":
        return _resolve_catalog(found, trust_remote_code)
    return _resolve_hub(text, token=token, trust_remote_code=trust_remote_code, hub=hub,
                        check_parameters=check_hub_parameters)


def resolve_source(ref: str) -> str:
    """What training passes to `from_pretrained` for `ref`, found as `resolve_model` finds it
    but without building the planner's spec (so an architecture the planner does not model
    still trains): a local folder holding config.json (absolute path), a catalog name's Hub id,
    a Hub id, or the bundled tiny model's folder. One-line `UserError` otherwise."""
    kind, text, found = _locate_model(ref)
    if kind == "local":
        folder, _ = _local_folder(found, text)
        return str(folder.resolve())
    if kind == "tiny":
        from tuneplan.services.bundled import tiny_model_dir

        return str(tiny_model_dir())
    if kind == "catalog":
        return found.hub_id
    return text


def _locate_model(ref: str) -> tuple[str, str, Any]:
    """(kind, the reference stripped, what was found): `local` (a Path), `tiny`, `catalog` (its
    entry) or `hub`; a one-line `UserError` for anything else."""
    text = (ref or "").strip()
    if not text:
        raise UserError("no model given: name a catalog model (e.g. llama-3.1-8b), a Hub id (owner/name) or a local folder")
    check_path(text, "the model name")
    if _looks_like_path(text):
        return "local", text, Path(text).expanduser()
    if text == TINY_MODEL:
        return "tiny", text, None
    entry = catalog.find(text)
    if entry is not None:
        return "catalog", text, entry
    path = Path(text).expanduser()
    if path.is_dir() or (path.is_file() and path.name == "config.json"):
        return "local", text, path
    if HUB_ID.match(text):
        return "hub", text, None
    suggestions = catalog.suggestions(text)
    hint = f"did you mean {', '.join(suggestions)}? " if suggestions else ""
    raise UserError(
        f"unknown model {text!r}: not a catalog name, a folder or a Hub id (owner/name); {hint}"
        f"the catalog has {', '.join(catalog.names()[:6])}, ..."
    )


def check_access(model: ResolvedModel, *, token: str | None = None, hub: Any = None) -> None:
    """Before a launch: a gated model needs a Hub token, and (online) the token must have
    access. Raises the same one-line UserErrors as a Hub lookup; offline with a token, the
    access cannot be checked and the run's own download decides."""
    if model.gated is not True or not model.hub_id:
        return
    url = f"https://huggingface.co/{model.hub_id}"
    if not (token or _saved_token_exists()):
        raise UserError(f"{model.hub_id} is a gated model and no Hub token is set: accept its licence at {url}, "
                        "then log in (`hf auth login`) or set HF_TOKEN")
    if hub_offline_mode():
        return
    # downloading config.json asks the Hub with the token: a GatedRepoError means no access yet
    _resolve_hub(model.hub_id, token=token, trust_remote_code=model.trust_remote_code, hub=hub,
                 check_parameters=False)


def check_source_access(source: str, *, token: str | None = None, hub: Any = None) -> None:
    """`check_access` for a run's `model.source` (what `tuneplan train` and the wizard launch):
    catalog names and Hub ids are checked; local folders and the bundled model need nothing."""
    entry = catalog.find(source)
    if entry is not None:
        if entry.gated:
            check_access(_resolve_catalog(entry, False), token=token, hub=hub)
    elif HUB_ID.match(source) and not Path(source).expanduser().exists():
        check_access(resolve_model(source, token=token, hub=hub, check_hub_parameters=False), token=token, hub=hub)


# -- sources ------------------------------------------------------------------------------
def _looks_like_path(text: str) -> bool:
    return text.startswith(("./", "../", "/", "~", ".\\", "..\\")) or text in (".", "..") or (
        os.sep != "/" and os.sep in text
    )


REQUIRED_KEYS = ("hidden_size", "num_hidden_layers")
"""Keys a `config.json` must state: without them the planner would take the transformers
class defaults (a ~7B model) and plan for a model that is not the one in the folder."""
MAX_LAYERS = 1000
"""The deepest published LLMs have ~126 layers (Llama 3.1 405B); the spec builds one entry per layer."""
MAX_DIMENSION = 2**24
"""Widths, head counts, vocabularies and expert counts above this are typos (the widest
published: hidden 16384, vocabulary 262k)."""
_DIMENSION_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                   "vocab_size", "num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size")


def _check_sizes(config: Mapping[str, Any], name: str) -> None:
    """One-line refusals for a config.json the planner cannot take at its word: a missing
    size (see REQUIRED_KEYS) or one so large that planning it would exhaust memory."""
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else None
    inner = text if text is not None and config.get("model_type") == "gemma3" else config
    missing = [k for k in REQUIRED_KEYS if inner.get(k) is None]
    if missing:
        raise UserError(f"{name}: config.json has no {' or '.join(missing)}; tuneplan plans from the model's "
                        "real sizes: is this the config.json of a complete checkpoint?")
    for key in ("num_hidden_layers", *_DIMENSION_KEYS):
        value = inner.get(key)
        limit = MAX_LAYERS if key == "num_hidden_layers" else MAX_DIMENSION
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
            raise UserError(f"{name}: config.json field {key} = {value:g} is beyond any real model "
                            f"(at most {limit:,}); fix config.json")


def _spec(config: Mapping[str, Any], name: str, trust_remote_code: bool) -> ModelSpec:
    if config.get("model_type") in SUPPORTED_MODEL_TYPES:  # an unsupported one is refused below, by name
        _check_sizes(config, name)
    try:
        return spec_from_config(config, name)
    except UnsupportedArchitecture as exc:
        extra = ""
        if config.get("auto_map"):
            extra = " (it ships its own modeling code; trust_remote_code lets it load, but tuneplan cannot plan for it)"
        raise UserError(f"{exc}{extra}") from None
    except ValueError as exc:
        raise UserError(f"{name}: invalid config.json: {exc}") from None


def _config_notes(spec: ModelSpec, config: Mapping[str, Any]) -> list[str]:
    notes = []
    if spec.is_multimodal():
        notes.append(
            f"multimodal checkpoint: the vision tower ({spec.vision_params:,} parameters) is loaded and frozen; training uses text only"
        )
    quant = config.get("quantization_config")
    if isinstance(quant, Mapping):
        notes.append(f"config.json has a quantization_config ({quant.get('quant_method', 'unknown method')}): the checkpoint is pre-quantized")
    return notes


def _resolve_catalog(entry: catalog.CatalogEntry, trust_remote_code: bool) -> ResolvedModel:
    spec = entry.spec()
    notes = _config_notes(spec, entry.config)
    if entry.gated:
        notes.append(f"gated on the Hub: accept the licence at https://huggingface.co/{entry.hub_id} and log in before training")
    return ResolvedModel(
        spec=spec,
        kind="catalog",
        source=entry.hub_id,
        name=entry.name,
        config=entry.config,
        hub_id=entry.hub_id,
        license=entry.license,
        gated=entry.gated,
        hub_parameters=entry.official_parameters,
        trust_remote_code=trust_remote_code,
        notes=tuple(notes),
    )


_TINY_SHAPE = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "vocab_size", "max_position_embeddings")


def is_bundled_tiny(config: Mapping[str, Any]) -> bool:
    """Whether `config` (a config.json dict) is the bundled tiny model's: its weights are
    random, so it trains in full (a LoRA adapter on a random frozen base barely learns)."""
    tiny = json.loads(TINY_MODEL_CONFIG.read_text(encoding="utf-8"))
    return all(config.get(k) == tiny[k] for k in _TINY_SHAPE)


def _resolve_bundled_tiny(trust_remote_code: bool) -> ResolvedModel:
    """`tuneplan:tiny`: planned from its config.json alone (the weights are built on first
    training use, `tuneplan.services.bundled.resolve_sources`)."""
    config = json.loads(TINY_MODEL_CONFIG.read_text(encoding="utf-8"))
    spec = _spec(config, TINY_MODEL, trust_remote_code)
    return ResolvedModel(spec=spec, kind="bundled", source=TINY_MODEL, name=TINY_MODEL, config=config,
                         license="bundled with tuneplan", gated=False, trust_remote_code=trust_remote_code,
                         notes=("the bundled tiny model: random weights, built on first use; for trying tuneplan "
                                "on any machine, not for results",))


def _local_folder(path: Path, shown: str | None = None) -> tuple[Path, Path]:
    """(the model folder, its config.json) for a folder or a config.json path; one-line
    `UserError`s for a missing folder, a file, an adapter folder or a folder without config.json."""
    if path.is_file() and path.name == "config.json":
        config_path, folder = path, path.parent
    else:
        folder, config_path = path, path / "config.json"
    if not folder.exists():
        raise UserError(f"model folder {shown or str(path)!r} does not exist: give a folder that holds config.json, a catalog name or a Hub id")
    if not folder.is_dir():
        raise UserError(f"{shown or str(path)!r} is a file, not a model folder: give the folder that holds config.json")
    if not config_path.is_file():
        adapter = folder / "adapter_config.json"
        if adapter.is_file():
            try:
                base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
            except (OSError, ValueError, AttributeError):
                base = None
            using = f" --model {base}" if base else " its base model"
            raise UserError(
                f"{str(folder)!r} holds a LoRA adapter, not a model: plan and train with{using} "
                "(merge the adapter first to fine-tune the merged model)"
            )
        raise UserError(
            f"model folder {str(folder)!r} has no config.json: point --model at the folder of a Hugging Face "
            "checkpoint (the one with config.json and *.safetensors)"
        )
    return folder, config_path


def _resolve_local(path: Path, trust_remote_code: bool, shown: str | None = None) -> ResolvedModel:
    folder, config_path = _local_folder(path, shown)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {config_path}: {exc}".splitlines()[0]) from None
    if not isinstance(config, dict):
        raise UserError(f"{config_path} is not a JSON object: is it a Hugging Face config.json?")
    name = folder.resolve().name or str(folder)
    spec = _spec(config, name, trust_remote_code)
    notes = _config_notes(spec, config)
    stored = _local_safetensors_parameters(folder, spec)
    if stored is not None:
        note = _mismatch_note(stored, spec, "the local safetensors index")
        if note:
            notes.append(note)
    return ResolvedModel(
        spec=spec,
        kind="local",
        source=str(folder.resolve()),
        name=name,
        config=config,
        local_path=folder.resolve(),
        hub_parameters=None,
        trust_remote_code=trust_remote_code,
        notes=tuple(notes),
    )


_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def _local_safetensors_parameters(folder: Path, spec: ModelSpec) -> int | None:
    """Parameters implied by `model.safetensors.index.json` `metadata.total_size` (bytes) when
    the checkpoint is stored in one dtype; None when that cannot be read exactly."""
    index = folder / "model.safetensors.index.json"
    size = _DTYPE_BYTES.get(spec.torch_dtype)
    if not index.is_file() or size is None:
        return None
    try:
        total = json.loads(index.read_text(encoding="utf-8"))["metadata"]["total_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(total, int) or total % size:
        return None
    return total // size


def _mismatch_note(counted: int, spec: ModelSpec, where: str) -> str | None:
    expected = spec.parameter_count()
    if counted <= 0 or abs(counted - expected) <= PARAMETER_MISMATCH_TOLERANCE * expected:
        return None
    diff = (counted - expected) / expected
    return (
        f"{where} counts {counted:,} parameters, the planner's spec {expected:,} ({diff:+.1%}); "
        "estimates follow config.json"
    )


# -- the Hub boundary ---------------------------------------------------------------------
def _default_hub() -> Any:
    import huggingface_hub

    return huggingface_hub


def _hub_errors() -> Any:
    from huggingface_hub import errors

    return errors


def _saved_token_exists() -> bool:
    """Whether huggingface_hub would send a token (HF_TOKEN or a saved login). The token
    itself is not kept."""
    try:
        from huggingface_hub import get_token

        return get_token() is not None
    except Exception:
        return bool(os.environ.get("HF_TOKEN"))


def _resolve_hub(repo_id: str, *, token: str | None, trust_remote_code: bool, hub: Any, check_parameters: bool) -> ResolvedModel:
    hub = hub if hub is not None else _default_hub()
    errors = _hub_errors()
    token = token or None  # "" would be sent as an empty credential
    url = f"https://huggingface.co/{repo_id}"
    has_token = bool(token) or _saved_token_exists()
    no_network = _no_network(hub.hf_hub_download)
    try:
        with _quiet_hub_logs():
            if no_network:  # the local cache only: no retry loop against a network that is not there
                path = hub.hf_hub_download(repo_id, "config.json", token=token, local_files_only=True)
            else:
                path = hub.hf_hub_download(repo_id, "config.json", token=token)
    except errors.GatedRepoError:
        if has_token:
            raise UserError(
                f"{repo_id} is a gated model and your Hub token has no access yet: accept its licence at {url} "
                "(approval can take a while), then retry"
            ) from None
        raise UserError(
            f"{repo_id} is a gated model: accept its licence at {url}, then log in (`hf auth login`) or set HF_TOKEN"
        ) from None
    except errors.RepositoryNotFoundError:
        suggestions = catalog.suggestions(repo_id.split("/")[-1])
        hint = f"; catalog models with a similar name: {', '.join(suggestions)}" if suggestions else ""
        private = "" if has_token else " (if it is private, log in with `hf auth login` or set HF_TOKEN)"
        raise UserError(f"no model {repo_id!r} on the Hugging Face Hub{private}; check the spelling{hint}") from None
    except errors.RevisionNotFoundError:
        raise UserError(f"{repo_id}: the requested revision does not exist on the Hub") from None
    except errors.EntryNotFoundError as exc:
        if isinstance(exc, errors.LocalEntryNotFoundError):
            raise UserError(_offline_message(repo_id, no_network or "")) from None
        raise UserError(f"{repo_id} has no config.json on the Hub: it is not a transformers model tuneplan can plan for") from None
    except errors.OfflineModeIsEnabled:
        raise UserError(_offline_message(repo_id)) from None
    except errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:
            raise UserError(f"the Hub rejected your token for {repo_id} (HTTP 401): check HF_TOKEN or run `hf auth login`") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"the Hugging Face Hub failed to serve {repo_id}/config.json: {first}") from None
    except (ConnectionError, TimeoutError) as exc:
        raise UserError(_offline_message(repo_id, str(exc))) from None
    except errors.HFValidationError as exc:
        raise UserError(f"{repo_id!r} is not a valid Hub id: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        if "connect" in str(exc).lower() or "resolve" in str(exc).lower():
            raise UserError(_offline_message(repo_id, str(exc))) from None
        raise UserError(f"cannot read config.json of {repo_id}: {exc}".splitlines()[0]) from None

    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"config.json of {repo_id} is unreadable: {exc}".splitlines()[0]) from None
    if not isinstance(config, dict):
        raise UserError(f"config.json of {repo_id} is not a JSON object")
    spec = _spec(config, repo_id, trust_remote_code)
    notes = _config_notes(spec, config)

    hub_parameters = license = gated = None
    if check_parameters and not hub_offline_mode() and not no_network:
        hub_parameters, license, gated = _hub_facts(hub, repo_id, token)
        if hub_parameters is not None:
            note = _mismatch_note(hub_parameters, spec, "the Hub's safetensors metadata")
            if note:
                notes.append(note)
    return ResolvedModel(
        spec=spec,
        kind="hub",
        source=repo_id,
        name=repo_id,
        config=config,
        hub_id=repo_id,
        license=license,
        gated=gated,
        hub_parameters=hub_parameters,
        trust_remote_code=trust_remote_code,
        notes=tuple(notes),
    )


class _quiet_hub_logs:
    """Hold huggingface_hub's logger at ERROR during a call: its "Retrying in 1s" lines would
    break the one-line error contract (the outcome is reported by us)."""

    def __enter__(self) -> None:
        self.logger = logging.getLogger("huggingface_hub")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)


def _no_network(download: Any) -> str | None:
    """Why the Hub cannot be reached right now (None: it can, or HF_HUB_OFFLINE already keeps
    the library on its cache). Asked only before the real library's download: a fake Hub
    boundary (tests) has no network to check."""
    if hub_offline_mode() or not str(getattr(download, "__module__", "")).startswith("huggingface_hub"):
        return None
    from tuneplan.services.hub import offline_reason

    return offline_reason()


def _offline_message(repo_id: str, detail: str = "") -> str:
    from tuneplan.services.hub import offline_fix

    why = "HF_HUB_OFFLINE is set" if hub_offline_mode() else "the Hugging Face Hub cannot be reached"
    if detail.startswith("no network"):
        why += f" ({detail})"
    return (
        f"offline: cannot fetch config.json of {repo_id}: {why} and it is not in the local Hub cache; "
        + offline_fix("a catalog name or a local folder with config.json")
    )


def _hub_facts(hub: Any, repo_id: str, token: str | None) -> tuple[int | None, str | None, bool | None]:
    """(safetensors parameter count, licence, gated) from the Hub API; Nones when unavailable.
    Never raises: this is a cross-check, not a requirement."""
    try:
        with _quiet_hub_logs():
            info = hub.model_info(repo_id, expand=["safetensors", "gated", "cardData"], token=token, timeout=10)
    except Exception:
        return None, None, None
    total = None
    st = getattr(info, "safetensors", None)
    if st is not None:
        total = getattr(st, "total", None)
        if not isinstance(total, int):
            params = getattr(st, "parameters", None)
            total = sum(params.values()) if isinstance(params, dict) and params else None
    card = getattr(info, "card_data", None) or getattr(info, "cardData", None)
    license = None
    if card is not None:
        license = card.get("license") if isinstance(card, dict) else getattr(card, "license", None)
    gated_raw = getattr(info, "gated", None)
    gated = None if gated_raw is None else bool(gated_raw)
    return total, (str(license) if license else None), gated


# -- remote code -----------------------------------------------------------------------------
def remote_code_files(config: Mapping[str, Any]) -> list[str]:
    """The Python files a `config.json`'s `auto_map` points at: what `trust_remote_code=True`
    would import. Entries are `module.Class` or `repo--module.Class`, alone or in a list (the
    tokenizer's slow/fast pair, `None` for a missing one), as transformers'
    `dynamic_module_utils.get_class_from_dynamic_module` reads them."""
    auto_map = config.get("auto_map") if isinstance(config, Mapping) else None
    if not isinstance(auto_map, Mapping):
        return []
    files: list[str] = []
    for value in auto_map.values():
        for ref in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(ref, str) and "." in ref:
                name = ref.split("--")[-1].rsplit(".", 1)[0] + ".py"
                if name not in files:
                    files.append(name)
    return files


def remote_code_request(source: str, *, requested: bool, granted: bool) -> bool:
    """Whether to run the model's own code: only when the user granted it on the command line
    (or in the wizard's confirmation). A preset or run config that asks for it (`requested`)
    without the grant is refused with one line naming the code files; a model that ships no
    code gets `False` whatever was requested (there is nothing to trust)."""
    if granted or not requested:
        return granted
    files = remote_code_files(resolve_model(source, check_hub_parameters=False).config)
    if files:
        raise UserError(
            f"the configuration asks for trust_remote_code, which would run {source}'s own Python code "
            f"({', '.join(files)}); it is off unless you pass --trust-remote-code on the command line "
            "(read those files first)")
    return False


def remote_code_warning(source: str, what: str) -> str:
    """The warning shown where a file asks for trust_remote_code (`presets show`,
    `plan --preset`): what would run, and that only the command line grants it."""
    try:
        files = remote_code_files(resolve_model(source, check_hub_parameters=False).config)
    except UserError:
        files = []
    code = f"{source}'s own Python code ({', '.join(files)})" if files else f"{source}'s own Python code, if it ships any"
    return (f"{what} asks for trust_remote_code, which would run {code}; tuneplan train runs it only with "
            "--trust-remote-code on the command line")
