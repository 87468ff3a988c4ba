"""`tuneplan push`: upload a run's adapter (or merged model) to the Hugging Face Hub.

Through `huggingface_hub` (`HfApi.create_repo` + `HfApi.create_commit`): every file of the
folder, and a `README.md` model card (`services/model_card.py`, the builder of the run's local
card too, with `tuneplan eval`'s results when `RUN/eval.json` exists) in place of the run's
local one, naming local paths by their last part.

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
    skipped: tuple[str, ...] = ()
    """Entries of the folder left out, each `path (why)`: symlinks, and anything that is not a
    regular file inside the run folder."""


def check_repo_id(repo_id: str, what: str = "--repo") -> str:
    """`repo_id` if the Hub accepts it as a model repository id: huggingface_hub's own
    validator (`utils.validate_repo_id`: no `--` or `..`, no `.git` end, no leading or trailing
    `-`/`.`, at most 96 characters) plus the `namespace/name` form a push needs; one line
    otherwise."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not REPO_ID_RE.fullmatch(repo_id):
        raise UserError(f"{what} must be a Hub id like your-name/model-name (got {repo_id!r})")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        reason = str(exc).split(":")[0].rstrip(".")
        raise UserError(f"{what} {repo_id!r} is not a name the Hub accepts ({reason}); pick another name") from None
    return repo_id


def files_to_upload(folder: Path, run_dir: Path) -> tuple[list[Path], list[str]]:
    """The regular files of `folder` to upload, and what was left out (`path (why)`). A symlink
    is never followed (a link to ~/.ssh/id_rsa planted in the adapter folder stays home), nor is
    a file whose real path leaves the run folder, nor a FIFO, device or socket. README.md (the
    card replaces it) and dotfiles are left out silently, as before."""
    import os
    import stat

    from tuneplan.files import is_inside

    keep: list[Path] = []
    skipped: list[str] = []
    if not is_inside(folder, run_dir):
        raise UserError(f"{folder} lies outside the run folder {run_dir} (a symlink?); nothing was uploaded")
    for top, dirs, names in os.walk(folder, followlinks=False):
        for d in list(dirs):
            if os.path.islink(os.path.join(top, d)):
                dirs.remove(d)
                skipped.append(f"{Path(top, d).relative_to(folder).as_posix()}/ (a symlink to a folder)")
        for name in names:
            p = Path(top, name)
            rel = p.relative_to(folder).as_posix()
            if name == "README.md" or name.startswith("."):
                continue
            mode = os.lstat(p).st_mode
            if stat.S_ISLNK(mode):
                skipped.append(f"{rel} (a symlink)")
            elif not stat.S_ISREG(mode):
                skipped.append(f"{rel} (not a regular file)")
            elif not is_inside(p, run_dir):
                skipped.append(f"{rel} (outside the run folder)")
            else:
                keep.append(p)
    return sorted(keep), sorted(skipped)


def base_model_id(config: RunConfig, override: str | None = None) -> str | None:
    """The base model's Hub id: `--base-model`, else the run's model source when it is a Hub id
    (a catalog name was resolved to its Hub id at launch), else None (a local folder)."""
    if override:
        return check_repo_id(override, "--base-model")
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

    check_repo_id(repo_id)
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
    files, skipped = files_to_upload(folder, merged_dir if merged_dir is not None else run_dir)
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
                      files=tuple(op.path_in_repo for op in ops), skipped=tuple(skipped))
