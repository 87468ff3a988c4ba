"""trust_remote_code: a preset or run config may ask for it, only `--trust-remote-code` grants
it. A real model folder whose `config.json` `auto_map` points at a module that writes a marker
file when imported: it must never be written, and every refusal is one line."""

from __future__ import annotations

import json
import shutil

import pytest

from tuneplan.cli import main
from tuneplan.data import SAMPLE_CHAT



@pytest.fixture
def coded_model(tiny_model, tmp_path):
    """The tiny model, plus modeling code that leaves a marker file if anything imports it."""
    folder = tmp_path / "coded-model"
    shutil.copytree(tiny_model, folder)
    marker = tmp_path / "REMOTE-CODE-RAN"
    (folder / "evil_modeling.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                             "class EvilConfig: pass\nclass EvilForCausalLM: pass\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil_modeling.EvilConfig", "AutoModelForCausalLM": "evil_modeling.EvilForCausalLM",
                       "AutoTokenizer": ["evil_tokenizer.EvilTokenizer", None]}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder, marker


def _preset(tmp_path, model) -> str:
    path = tmp_path / "asks-for-code.toml"
    path.write_text(f'''format_version = 1
name = "asks-for-code"
description = "a preset that asks for the model's own code"

[model]
source = "{model}"
trust_remote_code = true

[data]
source = "{SAMPLE_CHAT}"

[setup]
method = "lora"
compute_dtype = "float32"
seq_len = 64
packing = false
micro_batch = 2
grad_accum = 1
grad_checkpointing = false
optimizer = "adamw"
attn = "sdpa"
fused_ce = true

[training]
max_steps = 2

[constraints]
gpu = "cpu"
''')
    return str(path)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_preset_cannot_grant_remote_code(coded_model, tmp_path, capsys, monkeypatch):
    folder, marker = coded_model
    monkeypatch.setenv("TUNEPLAN_PRESETS_DIR", str(tmp_path / "presets"))
    runs = tmp_path / "runs"
    preset = _preset(tmp_path, folder)

    assert main(["train", "--preset", preset, "--runs-dir", str(runs)]) == 2
    err = _one_line(capsys)
    assert "--trust-remote-code" in err and "evil_modeling.py" in err and "evil_tokenizer.py" in err
    assert not runs.exists() or not any(runs.iterdir())

    # a run config file asks the same way, and is refused the same way
    config = tmp_path / "run.toml"
    config.write_text(f'[model]\nsource = "{folder}"\ntrust_remote_code = true\n[data]\nsource = "{SAMPLE_CHAT}"\n'
                      '[setup]\nmethod = "lora"\nmicro_batch = 2\ngrad_accum = 1\nseq_len = 64\n'
                      'compute_dtype = "float32"\npacking = false\ngrad_checkpointing = false\noptimizer = "adamw"\n'
                      'attn = "sdpa"\nfused_ce = true\n')
    assert main(["train", "--config", str(config), "--runs-dir", str(runs)]) == 2
    assert "--trust-remote-code" in _one_line(capsys)

    # presets show and plan --preset warn, naming the files
    assert main(["presets", "show", preset]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "trust_remote_code" in err and "evil_modeling.py" in err
    main(["plan", "--preset", preset, "--vram", "8GiB"])
    err = capsys.readouterr().err
    assert "warning" in err and "evil_modeling.py" in err
    assert not marker.exists()


def test_only_the_command_line_grants_it(coded_model, tiny_model, tmp_path):
    import argparse

    from tuneplan.cli import build_parser
    from tuneplan.commands.train import build_config

    folder, marker = coded_model
    parser: argparse.ArgumentParser = build_parser()
    preset = _preset(tmp_path, folder)
    granted = build_config(parser.parse_args(["train", "--preset", preset, "--trust-remote-code"]))
    assert granted.model.trust_remote_code is True
    # a model without code: a request is dropped, not granted
    plain = build_config(parser.parse_args(["train", "--preset", _preset(tmp_path, tiny_model)]))
    assert plain.model.trust_remote_code is False
    assert not marker.exists()
