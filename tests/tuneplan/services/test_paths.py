"""The user's folders are worked out in one place (`tuneplan/services/paths.py`): each follows
its environment variable, else the platform's per-user folder; presets and alerts read them
from there."""

from __future__ import annotations

from pathlib import Path

import platformdirs

from tuneplan.services import notify, paths
from tuneplan.services import presets as P

ENVS = (paths.RUNS_DIR_ENV, paths.PRESETS_DIR_ENV, paths.USER_CONFIG_ENV, paths.CACHE_DIR_ENV)


def test_each_user_folder_follows_its_variable_else_the_platforms_folder(tmp_path, monkeypatch):
    for name in ENVS:
        monkeypatch.delenv(name, raising=False)
    assert paths.runs_root() == platformdirs.user_data_path("tuneplan") / "runs"
    assert paths.user_presets_dir() == platformdirs.user_config_path("tuneplan") / "presets"
    assert paths.user_config_file() == platformdirs.user_config_path("tuneplan") / "config.toml"
    assert paths.cache_dir() == platformdirs.user_cache_path("tuneplan")
    monkeypatch.setenv("HOME", str(tmp_path))
    for name, where in zip(ENVS, ("runs", "presets", "config.toml", "cache")):
        monkeypatch.setenv(name, f"~/{where}")
    assert [paths.runs_root(), paths.user_presets_dir(), paths.user_config_file(), paths.cache_dir()] == [
        tmp_path / "runs", tmp_path / "presets", tmp_path / "config.toml", tmp_path / "cache"]
    # the presets and the alerts take theirs from here
    assert P.user_dir() == tmp_path / "presets" and P.cache_dir() == tmp_path / "cache"
    (tmp_path / "config.toml").write_text('[notify]\nurl = "https://ntfy.sh/x"\n')
    assert notify.user_notify().url == "https://ntfy.sh/x"
    assert paths.runs_root(str(tmp_path / "elsewhere")) == Path(tmp_path / "elsewhere")  # --runs-dir wins
