"""`tuneplan push`: upload a run's adapter (or merged model) to the Hugging Face Hub.

Through `huggingface_hub` (`HfApi.create_repo` + `HfApi.create_commit`): every file of the
folder, and a `README.md` model card (`services/model_card.py`, the builder of the run's local
card too) in place of the run's local one, naming local paths by their last part.

The token is the one `huggingface_hub` finds (`HF_TOKEN`, else the cached `hf auth login`); it
is passed to the calls and never written anywhere. No torch here: a merge is the caller's
(`tuneplan/commands/push.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuneplan.config import RunConfig, load_config
from tuneplan.errors import UserError
from tuneplan.events import ADAPTER_DIR, CONFIG_FILE, MODEL_DIR
from tuneplan.services.model_card import REPO_ID_RE, is_hub_id, model_card

@dataclass(frozen=True)
class PushResult:
    url: str
    """The repository's page on the Hub."""
    commit_url: str
    files: tuple[str, ...]
    """Paths uploaded, README.md included."""


def base_model_id(config: RunConfig, override: str | None = None) -> str | None:
    """The base model's Hub id: `--base-model`, else the run's model source when it is a Hub id
    (a catalog name was resolved to its Hub id at launch), else None (a local folder)."""
    if override:
        if not REPO_ID_RE.fullmatch(override):
            raise UserError(f"--base-model must be a Hub id like org/name (got {override!r})")
        return override
    return config.model.source if is_hub_id(config.model.source) else None


def folder_to_push(run_dir: Path, config: RunConfig, merged_dir: Path | None) -> Path:
    """The folder whose files are uploaded: the merged model, the adapter, or a full run's model."""
    if merged_dir is not None:
        return merged_dir
    folder = run_dir / (MODEL_DIR if config.setup.method == "full" else ADAPTER_DIR)
    if not folder.is_dir():
        raise UserError(f"run {run_dir.name} has no final {folder.name}/ yet (it saves it when it finishes); "
                        "wait for it or push after `tuneplan resume`")
    return folder


def push(run_dir: Path, repo_id: str, *, private: bool = False, merged_dir: Path | None = None,
         base_model: str | None = None, token: str | None = None) -> PushResult:
    """Create the repository (kept when it exists) and commit the folder and the card."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if not REPO_ID_RE.fullmatch(repo_id):
        raise UserError(f"--repo must be a Hub id like your-name/model-name (got {repo_id!r})")
    if constants.HF_HUB_OFFLINE:
        raise UserError("the Hub is switched off here (HF_HUB_OFFLINE=1): unset it to push")
    token = token or get_token()
    if not token:
        raise UserError("no Hugging Face token: set HF_TOKEN or log in with `hf auth login` (a write token)")
    run_dir = Path(run_dir)
    config = load_config(run_dir / CONFIG_FILE)
    folder = folder_to_push(run_dir, config, merged_dir)
    base = base_model_id(config, base_model)
    card = model_card(run_dir, config, load_from=repo_id, public=True, base_model=base, merged=merged_dir is not None)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "README.md" and not p.name.startswith("."))
    ops = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p)) for p in files]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.create_commit(repo_id, ops, commit_message=f"tuneplan: {config.name or run_dir.name} "
                                 f"({'merged model' if merged_dir is not None else 'adapter' if config.setup.method != 'full' else 'model'})")
    except OfflineModeIsEnabled:
        raise UserError("the Hub is switched off here (HF_HUB_OFFLINE=1): unset it to push") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        hint = {401: "the token is not valid: log in again with `hf auth login`",
                403: f"the token may not write to {repo_id}: use a write token, or a repo of your own"}.get(status, "")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"push to {repo_id} failed: {hint or first}") from None
    except Exception as exc:
        # no connection: huggingface_hub's HTTP client raises its transport errors (httpx's), not OSError
        if isinstance(exc, OSError) or type(exc).__module__.split(".")[0].startswith(("httpx", "httpcore")):
            raise UserError(f"push to {repo_id} failed: cannot reach {constants.ENDPOINT} "
                            f"({type(exc).__name__})") from None
        raise
    return PushResult(url=str(url), commit_url=info.commit_url,
                      files=tuple(op.path_in_repo for op in ops))
