"""The scripted probe suite: every command's numeric and name arguments, fed values that
deserve one line (not finite, out of range, not a number, past the file-name limit, a file
where a folder belongs). Each probe must end with exit 2, exactly one line on stderr, and no
traceback. In-process (`tuneplan.cli.main`), so the few hundred probes take seconds; nothing is
launched (a probe that got through validation would meet a full disk: TUNEPLAN_FAKE_FREE_BYTES)
and each expected message names the argument, so a probe cannot pass on an unrelated error."""

from __future__ import annotations

import pytest

from tuneplan.cli import main
from tuneplan.data import SAMPLE_CHAT

NOT_FINITE = ["inf", "-inf", "nan", "1e400"]
HUGE = ["1e26", "99999999999999999999999999"]
NEGATIVE = ["-1"]
NOT_A_NUMBER = ["x", "", "1O"]
BAD_NUMBERS = NOT_FINITE + HUGE + NEGATIVE + NOT_A_NUMBER
LONG = "n" * 300
VERY_LONG = "m" * 100_000

PLAN = ["plan", "--model", "llama-3.1-8b", "--gpu", "rtx-4090"]
PLAN_NUMBERS = {  # flag -> word the error must contain
    "--seq-len": "--seq-len", "--batch": "--batch", "--grad-accum": "--grad-accum",
    "--effective-batch": "--effective-batch", "--lora-r": "--lora-r", "--lora-alpha": "--lora-alpha",
    "--lora-dropout": "--lora-dropout", "--dataset-tokens": "--dataset-tokens", "--p99-len": "--p99-len",
    "--epochs": "--epochs", "--min-seq-len": "--min-seq-len", "--max-seq-len": "--max-seq-len",
    "--safety-margin": "--safety-margin", "--price": "--price", "--gpus": "--gpus",
    "--gpus-per-node": "--gpus-per-node", "--vram": "--vram",
}
TRAIN_NUMBERS = {  # flag -> the words an error about it may use (argparse: the flag; validation: the field)
    "--seq-len": ("--seq-len", "seq_len"), "--batch": ("--batch", "micro_batch"),
    "--grad-accum": ("--grad-accum",), "--lora-r": ("--lora-r", "lora_rank"), "--lora-alpha": ("--lora-alpha",),
    "--lora-dropout": ("--lora-dropout",), "--epochs": ("epochs",), "--max-steps": ("max-steps",),
    "--lr": ("--lr", "learning_rate"), "--warmup-ratio": ("warmup-ratio",), "--eval-fraction": ("eval-fraction",),
    "--save-steps": ("save-steps",), "--save-total-limit": ("save-total-limit",),
    "--logging-steps": ("logging-steps",), "--seed": ("seed",), "--max-samples": ("max-samples",),
    "--max-retries": ("max-retries",), "--gpus": ("--gpus", "num_gpus"), "--vram": ("--vram",),
}
# values that are fine for a flag (so they are not probes of it)
VALID = {("plan", "--lora-dropout"): {"-1"}, ("train", "--lora-dropout"): set()}
RUN_COMMANDS = ["attach", "stop", "save", "resume", "chat", "export", "eval"]


def _train_base(tmp_path, model_dir) -> list[str]:
    return ["train", "--model", str(model_dir), "--dataset", str(SAMPLE_CHAT), "--runs-dir", str(tmp_path / "runs"),
            "--method", "lora", "--seq-len", "64", "--batch", "1", "--grad-accum", "1", "--grad-checkpointing", "off",
            "--optimizer", "adamw", "--attn", "sdpa", "--fused-ce", "on", "--packing", "off",
            "--compute-dtype", "float32", "--max-steps", "2"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A model folder the planner and the launcher accept, without building weights (no run
    gets that far): the bundled tiny config."""
    import shutil

    from tuneplan.data import TINY_MODEL_CONFIG

    folder = tmp_path_factory.mktemp("model")
    shutil.copy(TINY_MODEL_CONFIG, folder / "config.json")
    return folder


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEPLAN_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("TUNEPLAN_PRESETS_DIR", str(tmp_path / "presets"))
    monkeypatch.setenv("TUNEPLAN_FAKE_FREE_BYTES", "1")  # a probe that slipped through launches nothing
    monkeypatch.chdir(tmp_path)


def _probe(argv: list[str], capsys) -> str:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    err = capsys.readouterr().err
    shown = " ".join(a if len(a) < 60 else a[:20] + f"...({len(a)} chars)" for a in argv)
    assert "Traceback" not in err, f"{shown}: {err}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"{shown}: exit {code}, stderr {err!r}"
    assert len(lines) == 1, f"{shown}: {len(lines)} lines on stderr: {err!r}"
    assert len(lines[0]) < 600, f"{shown}: a {len(lines[0])}-character line"
    return lines[0]


def _cases():
    cases = []
    for flag, word in PLAN_NUMBERS.items():
        for value in BAD_NUMBERS:
            if value not in VALID.get(("plan", flag), set()):
                cases.append(pytest.param("plan", flag, value, word, id=f"plan{flag}={value[:12]}"))
    for flag, word in TRAIN_NUMBERS.items():
        for value in BAD_NUMBERS:
            cases.append(pytest.param("train", flag, value, word, id=f"train{flag}={value[:12]}"))
    for value in BAD_NUMBERS:
        cases.append(pytest.param("stop", "--timeout", value, "--timeout", id=f"stop--timeout={value[:12]}"))
        cases.append(pytest.param("chat", "--temperature", value, "--temperature", id=f"chat--temperature={value[:12]}"))
        cases.append(pytest.param("chat", "--max-new-tokens", value, "--max-new-tokens",
                                  id=f"chat--max-new-tokens={value[:12]}"))
        cases.append(pytest.param("demo", "--max-steps", value, "--max-steps", id=f"demo--max-steps={value[:12]}"))
        cases.append(pytest.param("serve", "--port", value, "--port", id=f"serve--port={value[:12]}"))
    for value in ["0", "65536", "99999"]:
        cases.append(pytest.param("serve", "--port", value, "--port", id=f"serve--port={value}"))
    for value in ["101"]:
        cases.append(pytest.param("chat", "--temperature", value, "--temperature", id=f"chat--temperature={value}"))
    return cases


@pytest.mark.parametrize("command, flag, value, word", _cases())
def test_numbers(command, flag, value, word, tmp_path, model_dir, capsys):
    if command == "plan":
        argv = PLAN + [flag, value]
    elif command == "train":
        base = _train_base(tmp_path, model_dir)
        if flag in base:  # replace the base's value of that flag
            i = base.index(flag)
            base = base[:i] + base[i + 2:]
        argv = base + [flag, value]
    elif command in ("stop", "chat"):
        argv = [command, "somerun", flag, value]
    else:
        argv = [command, flag, value]
    line = _probe(argv, capsys).replace(str(tmp_path), "TMP")  # the word must not come from a test's folder name
    words = (word,) if isinstance(word, str) else word
    assert any(w.lstrip("-").lower().replace("_", "-") in line.lower().replace("_", "-") for w in words), line


def _name_cases():
    cases = []
    for long_name, label in ((LONG, "300"), (VERY_LONG, "100k")):
        cases += [
            pytest.param(["plan", "--model", long_name], id=f"plan--model={label}"),
            pytest.param(["plan", "--model", "./" + long_name], id=f"plan--model=./{label}"),
            pytest.param(["plan", "--model", "llama-3.1-8b", "--gpu", "rtx-4090", "--dataset", long_name],
                         id=f"plan--dataset={label}"),
            pytest.param(["plan", "--model", "llama-3.1-8b", "--gpu", long_name], id=f"plan--gpu={label}"),
            pytest.param(["plan", "--preset", long_name], id=f"plan--preset={label}"),
            pytest.param(["runs", "--runs-dir", long_name], id=f"runs--runs-dir={label}"),
            pytest.param(["presets", "show", long_name], id=f"presets-show={label}"),
            pytest.param(["presets", "delete", long_name, "--yes"], id=f"presets-delete={label}"),
            pytest.param(["presets", "save", long_name, "--from", "somerun"], id=f"presets-save-name={label}"),
            pytest.param(["presets", "save", "ok-name", "--from", long_name], id=f"presets-save-from={label}"),
            pytest.param(["export", "somerun", "--merge", "--out", long_name + "/x"], id=f"export--out={label}"),
            pytest.param(["demo", "--runs-dir", long_name], id=f"demo--runs-dir={label}"),
        ]
        for command in RUN_COMMANDS:
            extra = ["--merge"] if command == "export" else []
            cases.append(pytest.param([command, long_name, *extra], id=f"{command}-RUN={label}"))
            cases.append(pytest.param([command, "somerun", "--runs-dir", long_name, *extra],
                                      id=f"{command}--runs-dir={label}"))
    cases.append(pytest.param(["attach", "r" * 5000], id="attach-RUN=5000"))
    return cases


@pytest.mark.parametrize("argv", _name_cases())
def test_names(argv, capsys):
    _probe(argv, capsys)


@pytest.mark.parametrize("flag", ["--name", "--model", "--dataset", "--runs-dir", "--config", "--preset"])
@pytest.mark.parametrize("length", [300, 5000])
def test_train_names(flag, length, tmp_path, model_dir, capsys):
    base = _train_base(tmp_path, model_dir)
    if flag in base:
        i = base.index(flag)
        base = base[:i] + base[i + 2:]
    _probe(base + [flag, "t" * length], capsys)


def test_files_where_folders_belong(tmp_path, model_dir, capsys):
    existing = tmp_path / "a-file"
    existing.write_text("not a folder")
    assert "file" in _probe(["demo", "--runs-dir", str(existing), "--no-dashboard"], capsys)
    assert "file" in _probe(["runs", "--runs-dir", str(existing)], capsys)
    assert "file" in _probe(["export", "somerun", "--merge", "--out", str(existing)], capsys)
    argv = _train_base(tmp_path, model_dir)
    i = argv.index("--runs-dir")
    assert "file" in _probe(argv[:i] + argv[i + 2:] + ["--runs-dir", str(existing)], capsys)


def test_bare_tuneplan_without_a_terminal(capsys):
    assert "terminal" in _probe([], capsys)  # pytest's stdin and stdout are not terminals


CONFIG_VALUES = [  # (section, key, TOML value): a run configuration file's numbers take the same checks
    ("training", "learning_rate", "inf"), ("training", "learning_rate", "nan"), ("training", "learning_rate", "-1e-4"),
    ("training", "epochs", "inf"), ("training", "epochs", "1e300"), ("training", "warmup_ratio", "nan"),
    ("training", "max_grad_norm", "inf"), ("training", "weight_decay", "-inf"), ("training", "seed", "-1"),
    ("training", "seed", "4294967296"), ("training", "max_steps", "1099511627776"),
    ("training", "save_steps", "0"), ("data", "eval_fraction", "nan"), ("data", "max_samples", "-5"),
    ("setup", "lora_rank", "1099511627776"), ("setup", "micro_batch", "9223372036854775807"),
    ("setup", "lora_dropout", "nan"), ("debug", "step_sleep_seconds", "-1"), ("debug", "step_sleep_seconds", "inf"),
    ("recovery", "max_retries", "-1"),
]


@pytest.mark.parametrize("section, key, value", CONFIG_VALUES, ids=[f"{s}.{k}={v}" for s, k, v in CONFIG_VALUES])
def test_config_file_numbers(section, key, value, tmp_path, model_dir, capsys):
    tables = {"model": {"source": f'"{model_dir}"'}, "data": {"source": f'"{SAMPLE_CHAT}"'},
              "setup": {"method": '"lora"', "micro_batch": "1", "grad_accum": "1", "seq_len": "64",
                        "compute_dtype": '"float32"', "packing": "false", "grad_checkpointing": "false",
                        "optimizer": '"adamw"', "attn": '"sdpa"', "fused_ce": "true"},
              "training": {"max_steps": "2"}}
    tables.setdefault(section, {})[key] = value
    path = tmp_path / "run.toml"
    path.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in table.items())
                            for name, table in tables.items()))
    line = _probe(["train", "--config", str(path), "--runs-dir", str(tmp_path / "runs")], capsys)
    assert f"{section}.{key}" in line, line
