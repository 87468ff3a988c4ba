"""Presets: the shipped files plan and fit, re-fits say what changed and why, bad files fail
in one line naming file, line and key, search order, save/delete, no token ever written."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from planner.gpus import GiB
from tuneplan.cli import main
from tuneplan.errors import UserError
from tuneplan.services import presets as P
from tuneplan.services.models import resolve_model
from tuneplan.services.planning import estimate

SHIPPED = sorted(P.shipped_dir().glob("*.toml"))
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No user presets, no project folder, a private cache, no GPU to find."""
    monkeypatch.setenv(P.PRESETS_DIR_ENV, str(tmp_path / "user-presets"))
    monkeypatch.setenv(P.CACHE_DIR_ENV, str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


class NoGPU:
    def probe(self):
        return []

    def status(self):
        return "no NVIDIA driver (test)"


def test_the_shipped_folder_has_the_presets_the_issue_asks_for():
    assert len(SHIPPED) >= 8
    presets = [P.load_preset_file(p, "shipped") for p in SHIPPED]
    kinds = set()
    for p in presets:
        hw = P.target_hardware(p)
        gib = round(hw.usable_bytes() / GiB) if p.constraints.gpu != P.CPU else 0
        kinds.add((p.config.setup.method, gib))
    for wanted in [("qlora", 12), ("qlora", 16), ("lora", 24), ("qlora", 24), ("qlora", 48), ("qlora", 80)]:
        assert wanted in kinds, wanted
    assert any(p.constraints.gpu == P.CPU for p in presets)
    assert any(p.config.setup.seq_len >= 8192 for p in presets), "a long-context preset"


def test_a_preset_may_ask_for_fsdp_cpu_offload_and_the_refit_keeps_it(tmp_path):
    """`cpu_offload` is a knob of tuneplan's FSDP path (accelerate `fsdp_offload_params`), not
    another training stack's: a preset with it loads, and its re-fit plans with offload."""
    text = SHIPPED[0].read_text().replace("[setup]\n", "[setup]\ncpu_offload = true\n", 1)
    path = tmp_path / "offload.toml"
    path.write_text(text.replace(f'name = "{SHIPPED[0].stem}"', 'name = "offload"'))
    preset = P.load_preset_file(path, "file")
    assert preset.config.setup.cpu_offload is True and "cpu_offload" in preset.setup_keys
    fit = P.refit(preset, hardware=P.target_hardware(preset))
    assert fit.fits and fit.config.setup.cpu_offload and fit.config.setup.strategy == "fsdp"


def test_a_refit_keeps_every_knob_but_the_refitted_ones(tmp_path):
    """The re-fit policy comes from the registry: every knob a preset sets that is not declared
    `refitted` (nor the method and sequence length the re-fit may step down) stays as saved, so
    a new knob cannot be dropped silently on a re-fit."""
    from tuneplan.knobs import KNOBS, REFIT_SEARCHED, REFITTED

    odd = {"packing": "false", "lora_dropout": "0.1", "lora_alpha": "8", "lora_rank": "4", "quant_type": '"fp4"',
           "double_quant": "false", "lora_targets": '"attention"'}
    source = next(p for p in SHIPPED if P.load_preset_file(p, "shipped").config.setup.method == "qlora")
    text = source.read_text()
    for key, value in odd.items():
        text = "\n".join(f"{key} = {value}" if line.split("=")[0].strip() == key else line
                         for line in text.splitlines())
        if f"{key} = {value}" not in text:
            text = text.replace("[setup]\n", f"[setup]\n{key} = {value}\n", 1)
    path = tmp_path / "odd.toml"
    path.write_text(text.replace(f'name = "{source.stem}"', 'name = "odd"'))
    preset = P.load_preset_file(path, "file")
    fit = P.refit(preset, gpu="a100-80gb")
    kept = [k.name for k in KNOBS if k.name not in REFITTED + REFIT_SEARCHED and k.group != "parallel"]
    assert set(odd) <= set(kept)
    for name in kept:
        assert getattr(fit.config.setup, name) == getattr(preset.config.setup, name), name


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_preset_plans_and_fits_on_the_gpu_it_names(path):
    preset = P.load_preset_file(path, "shipped")
    assert preset.name == path.stem
    # header comment: what it is for and the exact command
    assert preset.header.startswith("#")
    assert f"--preset {preset.name}" in preset.header
    target = P.target_hardware(preset)
    assert target is not None, "every shipped preset names the hardware it was made for"
    fit = P.refit(preset, hardware=target)  # the real planner
    assert fit.fits, fit.reasons
    # on its own card nothing that defines the preset changes ...
    changed = {k for k, _, _ in fit.changes}
    assert not changed & {"method", "seq_len"}, fit.change_text()
    assert fit.config.setup.effective_batch() == preset.effective_batch() and fit.config.setup.num_gpus == 1
    # ... and, as saved, it fits on the card (estimated independently of the re-fit; the re-fit
    # above also kept the planner's safety margin)
    config = P.resolve_sources(preset.config, build=False)
    spec = resolve_model(config.model.source).spec
    est = estimate(spec, target, preset.config.setup)
    assert est["memory"].device_bytes <= est["usable_bytes"], (est["memory"].device_bytes / GiB,
                                                              est["usable_bytes"] / GiB)
    assert fit.config.prediction.device_bytes <= fit.outcome.result.budget_bytes
    assert preset.config.setup.effective_batch() == preset.effective_batch()


def _preset(name: str) -> P.Preset:
    return P.find_preset(name)


def _largest_gpu_preset() -> P.Preset:
    """A shipped LoRA/QLoRA preset made for a 24 GB card with micro-batch > 1."""
    for path in SHIPPED:
        p = P.load_preset_file(path, "shipped")
        hw = P.target_hardware(p)
        if p.config.setup.method == "qlora" and p.config.setup.micro_batch > 1 and round(hw.usable_bytes() / GiB) == 24 \
                and p.config.setup.seq_len <= 4096:
            return p
    raise AssertionError("no 24 GB QLoRA preset")


def test_refit_to_a_smaller_card_keeps_method_and_effective_batch_and_says_why():
    preset = _largest_gpu_preset()
    fit = P.refit(preset, vram_bytes=16 * GiB)
    assert fit.fits
    new, old = fit.config.setup, preset.config.setup
    assert new.method == old.method
    assert new.effective_batch() == old.effective_batch()
    assert new.seq_len == old.seq_len and new.num_gpus == 1  # never more GPUs than the preset had
    assert new.micro_batch < old.micro_batch and new.grad_accum > old.grad_accum
    text = "\n".join(fit.summary_lines())
    assert f"micro-batch {old.micro_batch} -> {new.micro_batch}" in text
    assert f"accumulation {old.grad_accum} -> {new.grad_accum}" in text
    assert "16.0 GiB" in text and "24.0 GiB" in text
    # the prediction travels with the configuration, and it fits the budget
    assert fit.config.prediction.device_bytes <= fit.outcome.result.budget_bytes


def test_refit_switches_lora_to_qlora_only_when_lora_cannot_fit_and_says_so():
    lora = next(p for p in (P.load_preset_file(x, "shipped") for x in SHIPPED) if p.config.setup.method == "lora")
    same = P.refit(lora, hardware=P.target_hardware(lora))
    assert same.config.setup.method == "lora"
    small = P.refit(lora, vram_bytes=12 * GiB)
    assert small.fits and small.config.setup.method == "qlora"
    assert any("LoRA does not fit" in r for r in small.reasons)
    assert small.config.setup.effective_batch() == lora.config.setup.effective_batch()
    pinned = replace(lora, constraints=replace(lora.constraints, allow_method_change=False))
    refused = P.refit(pinned, vram_bytes=12 * GiB)
    assert not refused.fits
    assert any("allow_method_change" in r for r in refused.reasons)


def test_refit_shortens_the_sequence_no_further_than_min_seq_len():
    long = max((P.load_preset_file(x, "shipped") for x in SHIPPED), key=lambda p: p.config.setup.seq_len)
    floor = long.constraints.min_seq_len
    assert floor and floor < long.config.setup.seq_len
    fit = P.refit(long, vram_bytes=14 * GiB)
    if fit.fits and fit.config.setup.seq_len != long.config.setup.seq_len:
        assert floor <= fit.config.setup.seq_len < long.config.setup.seq_len
        assert any("Sequence length" in r and "truncated" in r for r in fit.reasons)
    tiny_card = P.refit(long, vram_bytes=4 * GiB)
    assert not tiny_card.fits
    text = "\n".join(tiny_card.summary_lines())
    assert "DOES NOT FIT" in text and f"at {floor} (constraints.min_seq_len)" in text


def test_refit_without_gpu_plans_for_the_cpu_or_the_presets_target():
    tiny = _preset("tiny-cpu")
    fit = P.refit(tiny, probe=NoGPU())
    assert fit.fits and fit.outcome.hardware.gpu.key == "cpu"
    assert any("No GPU found" in n and "CPU" in n for n in fit.notes)
    gpu_preset = _largest_gpu_preset()
    fit = P.refit(gpu_preset, probe=NoGPU())
    assert fit.outcome.hardware.gpu.key == gpu_preset.constraints.gpu
    assert any("preset's own target" in n for n in fit.notes)


# -- bad input ------------------------------------------------------------------------------------
GOOD = """# test preset
format_version = 1
name = "mine"
description = "test"

[model]
source = "llama-3.1-8b"

[setup]
method = "qlora"
micro_batch = 2
grad_accum = 8

[constraints]
gpu = "rtx-4090"
"""


def _error(text: str, tmp_path: Path) -> str:
    path = tmp_path / "mine.toml"
    path.write_text(text)
    with pytest.raises(UserError) as exc:
        P.load_preset_file(path)
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_a_good_preset_loads(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(GOOD)
    p = P.load_preset_file(path)
    assert p.config.setup.method == "qlora" and p.effective_batch() == 16


def test_unknown_key_names_key_file_line_and_the_closest(tmp_path):
    msg = _error(GOOD.replace("micro_batch = 2", "micro_bach = 2"), tmp_path)
    line = GOOD.splitlines().index("micro_batch = 2") + 1
    assert f"mine.toml:{line}:" in msg
    assert "setup.micro_bach" in msg and "did you mean micro_batch" in msg
    msg = _error(GOOD.replace("[constraints]", "[constrains]"), tmp_path)
    assert "unknown key constrains" in msg and "did you mean constraints" in msg
    assert f":{GOOD.splitlines().index('[constraints]') + 1}:" in msg


def test_wrong_type_missing_field_newer_version_bad_value(tmp_path):
    msg = _error(GOOD.replace("grad_accum = 8", 'grad_accum = "eight"'), tmp_path)
    assert "setup.grad_accum must be a whole number" in msg and "'eight'" in msg
    assert f":{GOOD.splitlines().index('grad_accum = 8') + 1}:" in msg
    msg = _error(GOOD.replace('source = "llama-3.1-8b"', "source = 8"), tmp_path)
    assert "model.source must be a string" in msg
    msg = _error(GOOD.replace('method = "qlora"\n', ""), tmp_path)
    assert "missing required field setup.method" in msg
    msg = _error(GOOD.replace("format_version = 1", "format_version = 99"), tmp_path)
    assert "format_version 99 is newer" in msg and "upgrade" in msg
    msg = _error(GOOD.replace("micro_batch = 2", "micro_batch = 0"), tmp_path)
    assert "setup.micro_batch must be > 0 (got 0)" in msg
    assert f":{GOOD.splitlines().index('micro_batch = 2') + 1}:" in msg
    msg = _error(GOOD.replace('gpu = "rtx-4090"', 'gpu = "rtx-4009"'), tmp_path)
    assert "constraints.gpu" in msg
    msg = _error(GOOD + "\n[debug]\noom_at_step = 3\n", tmp_path)
    assert "debug is not part of a preset" in msg
    # how another training stack differs is the planner's calibration profile, not a preset key
    msg = _error(GOOD.replace("grad_accum = 8", "grad_accum = 8\nautocast = false"), tmp_path)
    assert "unknown key setup.autocast" in msg and "\n" not in msg
    assert f":{GOOD.splitlines().index('grad_accum = 8') + 2}:" in msg
    msg = _error(GOOD.replace("[model]", "[model"), tmp_path)
    assert "not valid TOML" in msg


def test_a_preset_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    path = tmp_path / "mine.toml"
    path.write_text(GOOD.replace('description = "test"', f'description = "{code}"'))
    preset = P.load_preset_file(path)
    P.refit(preset, hardware=P.target_hardware(preset))
    assert preset.description == code and not marker.exists()


def test_a_run_configuration_file_reads_as_a_preset(tmp_path):
    """The wizard's review screen saves run configurations into the user presets folder."""
    from planner.setup import TrainSetup
    from tuneplan.config import DataConfig, ModelConfig, RunConfig, save_config

    path = tmp_path / "wizard.toml"
    save_config(RunConfig(model=ModelConfig(source="llama-3.1-8b"), data=DataConfig(source="d.jsonl"),
                          setup=TrainSetup(method="qlora", micro_batch=4, grad_accum=4)), path)
    preset = P.load_preset_file(path)
    assert preset.name == "wizard" and preset.effective_batch() == 16
    assert P.refit(preset, gpu="rtx-4090").fits
    msg = _error(GOOD.replace("format_version = 1", "format_version = 1\nversion = 1"), tmp_path)
    assert "version is not part of a preset" in msg


# -- search order, list, show, delete ----------------------------------------------------------------
def _write(folder: Path, name: str, description: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(GOOD.replace('name = "mine"', f'name = "{name}"').replace('"test"', f'"{description}"'))
    return path


def test_search_order_project_then_user_then_shipped(isolated, capsys):
    user = isolated / "user-presets"
    project = Path.cwd() / "presets"
    _write(user, "tiny-cpu", "user copy")
    assert P.find_preset("tiny-cpu").origin == "user"
    _write(project, "tiny-cpu", "project copy")
    assert P.find_preset("tiny-cpu").origin == "project"
    assert [o for o, _ in P.search_path()] == ["project", "user", "shipped"]
    assert main(["presets", "list"]) == 0
    out = capsys.readouterr().out
    for path in SHIPPED:
        assert path.stem in out
    assert "project" in out and "user" in out and "shipped" in out and "hidden by project" in out
    assert main(["presets", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    origins = [p["origin"] for p in data["presets"] if p["name"] == "tiny-cpu"]
    assert origins == ["project", "user", "shipped"]


def test_show_and_delete(isolated, capsys, monkeypatch):
    user = isolated / "user-presets"
    path = _write(user, "mine", "my preset")
    assert main(["presets", "show", "mine"]) == 0
    out = capsys.readouterr().out
    assert str(path) in out and 'description = "my preset"' in out
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["presets", "delete", "mine"]) == 2
    assert "--yes" in capsys.readouterr().err and path.exists()
    assert main(["presets", "delete", "tiny-cpu", "--yes"]) == 2
    assert "shipped" in capsys.readouterr().err
    assert main(["presets", "delete", "mine", "--yes"]) == 0
    assert not path.exists()
    assert main(["presets", "show", "mine"]) == 2
    assert "no preset named 'mine'" in capsys.readouterr().err


# -- save --from RUN, and the Hub token --------------------------------------------------------
def _finished_run(root: Path) -> Path:
    from planner.setup import TrainSetup
    from tuneplan.config import DataConfig, ModelConfig, PredictionConfig, RunConfig, save_config

    from tuneplan.events import Status, read_status, write_status

    run = root / "my-run"
    run.mkdir(parents=True)
    recorded = ROOT / "tests" / "data" / "runs" / "tiny-done"  # a recorded finished run (events)
    shutil.copy(recorded / "events.jsonl", run / "events.jsonl")
    status = read_status(recorded) or Status()
    status.phase, status.pids = "done", []
    write_status(run, status)
    config = RunConfig(model=ModelConfig(source="llama-3.1-8b"), data=DataConfig(source="data.jsonl"),
                       setup=TrainSetup(method="qlora", micro_batch=2, grad_accum=8, seq_len=1024),
                       prediction=PredictionConfig(torch_peak_bytes=5, device_bytes=6), name="my-run")
    save_config(config, run / "config.toml")
    return run


def test_save_from_a_run_records_evidence_and_never_the_token(isolated, capsys, monkeypatch):
    token = "hf_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7"
    monkeypatch.setenv("HF_TOKEN", token)
    runs = isolated / "runs"
    _finished_run(runs)
    assert main(["presets", "save", "from-run", "--from", "my-run", "--runs-dir", str(runs)]) == 0
    path = isolated / "user-presets" / "from-run.toml"
    text = path.read_text()
    assert token not in text and "hf_" not in text
    preset = P.find_preset("from-run")
    assert preset.origin == "user"
    assert preset.config.setup.micro_batch == 2 and preset.effective_batch() == 16
    from tuneplan.events import read_status

    assert preset.evidence is not None and preset.evidence.run == "my-run"
    assert preset.evidence.steps == read_status(runs / "my-run").step
    assert preset.evidence.outcome == "done" and preset.evidence.torch_version
    assert "[prediction]" not in text and "[evidence]" in text
    # never overwritten without --force
    assert main(["presets", "save", "from-run", "--from", "my-run", "--runs-dir", str(runs)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["presets", "save", "from-run", "--from", "my-run", "--runs-dir", str(runs), "--force",
                 "--description", "again"]) == 0
    assert P.find_preset("from-run").description == "again"


def test_a_token_in_the_text_is_refused(isolated, monkeypatch):
    token = "hf_" + "Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3"
    monkeypatch.setenv("HF_TOKEN", token)
    from tuneplan.config import RunConfig, ModelConfig

    config = RunConfig(model=ModelConfig(source="llama-3.1-8b"))
    with pytest.raises(UserError, match="token"):
        P.save_config_as_preset(config, "leak", f"see {token}")
    assert not (isolated / "user-presets" / "leak.toml").exists()


def test_save_refuses_an_unfinished_run(isolated):
    from tuneplan.events import Status, write_status

    runs = isolated / "runs"
    run = _finished_run(runs)
    write_status(run, Status(phase="failed", error="boom"))
    with pytest.raises(UserError, match="failed"):
        P.save_from_run("x", run)


# -- the commands that load a preset ------------------------------------------------------------
def test_plan_preset_with_vram_shows_the_refit(capsys):
    preset = _largest_gpu_preset()
    assert main(["plan", "--preset", preset.name, "--vram", "16GiB"]) == 0
    out = capsys.readouterr().out
    assert f"Preset {preset.name}" in out and "re-fitted for a 16.0 GiB GPU" in out
    assert f"micro-batch {preset.config.setup.micro_batch} ->" in out
    assert "FITS" in out
    assert main(["plan", "--preset", preset.name, "--gpu", "a100-80gb", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["preset"]["name"] == preset.name and data["fits"]
    assert data["config"]["effective_batch"] == preset.effective_batch()
    assert main(["plan", "--preset", preset.name, "--batch", "2"]) == 2
    assert "cannot be combined with --preset" in capsys.readouterr().err
    assert main(["plan", "--preset", "no-such-preset"]) == 2


def test_load_preset_config_is_what_train_gets(capsys):
    config = P.load_preset_config(_largest_gpu_preset().name, vram="16GiB", build_sources=False)
    assert config.model.source and config.prediction.device_bytes
    assert "re-fitted for a 16.0 GiB GPU" in capsys.readouterr().err
    tiny = P.load_preset_config("tiny-cpu", echo=False, build_sources=False)
    assert Path(tiny.data.source).is_file() and (Path(tiny.model.source) / "config.json").is_file()


def test_listing_and_planning_presets_load_no_torch_or_textual():
    import subprocess
    import sys

    code = ("import sys\nfrom tuneplan.cli import main\n"
            "main(['presets', 'list'])\nmain(['plan', '--preset', 'qwen2.5-14b-qlora-24gb', '--vram', '16GiB'])\n"
            "heavy = {m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'trl', 'peft', 'textual'}\n"
            "print('HEAVY', sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


# --- issue 19, items 3 and 7: deleting only the user's presets; shipped presets as package data;
# one bad preset file never hangs or breaks the others ----------------------------------------------

def test_delete_by_path_refuses_a_preset_outside_the_users_folders(isolated, capsys):
    other = isolated / "someone-elses"
    path = _write(other, "theirs", "not mine")
    assert main(["presets", "delete", str(path), "--yes"]) == 2
    assert path.exists() and "not in your presets folders" in capsys.readouterr().err
    mine = _write(isolated / "user-presets", "mine", "mine")
    assert main(["presets", "delete", str(mine), "--yes"]) == 0 and not mine.exists()


def test_delete_by_path_refuses_a_shipped_preset(capsys):
    shipped = P.shipped_dir() / "tiny-cpu.toml"
    assert shipped.is_file()
    assert main(["presets", "delete", str(shipped), "--yes"]) == 2
    assert shipped.is_file() and "shipped with tuneplan" in capsys.readouterr().err


def test_a_presets_folder_in_the_working_directory_does_not_hide_the_shipped_ones(isolated):
    """`python -m tuneplan` puts the working directory on sys.path: a `./presets/` there (a
    project's own presets) must not be taken for the shipped ones."""
    import subprocess
    import sys

    _write(Path.cwd() / "presets", "mine", "a project preset")
    out = subprocess.run([sys.executable, "-m", "tuneplan", "plan", "--preset", "tiny-cpu"], capture_output=True,
                         text=True, timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    listing = subprocess.run([sys.executable, "-m", "tuneplan", "presets", "list", "--json"], capture_output=True,
                             text=True, timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    origins = {(p["name"], p["origin"]) for p in json.loads(listing.stdout)["presets"]}
    assert ("mine", "project") in origins and ("tiny-cpu", "shipped") in origins


def test_a_fifo_device_or_deeply_nested_preset_is_listed_as_unreadable_and_breaks_nothing(isolated, capsys):
    import os
    import subprocess
    import sys

    user = isolated / "user-presets"
    user.mkdir()
    os.mkfifo(user / "fifo.toml")
    (user / "zero.toml").symlink_to("/dev/zero")
    (user / "deep.toml").write_text("a = " + "[" * 1000 + "]" * 1000 + "\n")  # 2 KB
    _write(user, "fine", "still listed")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(*argv):
        return subprocess.run([sys.executable, "-m", "tuneplan", *argv], capture_output=True, text=True,
                              timeout=60, env=env)  # a hang is a failure, not a stuck suite

    listing = run("presets", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    by_name = {p["name"]: p for p in json.loads(listing.stdout)["presets"]}
    assert "FIFO" in by_name["fifo"]["error"] and "character device" in by_name["zero"]["error"]
    assert "nested too deeply" in by_name["deep"]["error"]
    assert by_name["fine"]["error"] is None and by_name["tiny-cpu"]["error"] is None
    for argv, word in ((["presets", "show", "deep"], "nested too deeply"), (["presets", "show", "fifo"], "FIFO"),
                       (["plan", "--preset", "tiny-cpux"], "did you mean tiny-cpu")):
        out = run(*argv)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and word in lines[0], out.stderr
