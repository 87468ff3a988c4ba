"""Files that deserve one line, not a traceback: corrupt datasets and absurd or incomplete
config.json files, through `plan` and `train` (in-process; nothing is launched)."""

from __future__ import annotations

import json
import shutil

import pytest

from tuneplan.cli import main
from tuneplan.data import SAMPLE_CHAT, TINY_MODEL_CONFIG


def _one_line(argv, capsys) -> str:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(TINY_MODEL_CONFIG, folder / "config.json")
    return folder


def _datasets(tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (path, a word the error must contain)."""
    import os

    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(bytes(range(256)) * 8 + os.urandom(512))
    fake = tmp_path / "fake.parquet"
    fake.write_bytes(b"this is not parquet" * 10)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    deep_line = tmp_path / "deep.jsonl"
    deep_line.write_text('{"a":' * 100_000 + "1" + "}" * 100_000 + "\n")
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text(json.dumps({"messages": [{"role": "user", "content": "hi \ud800"},
                                                  {"role": "assistant", "content": "ok"}]}) + "\n")
    return {"binary": (str(binary), "UTF-8"), "fake-parquet": (str(fake), "Parquet"),
            "deep-json": (str(deep), "nested"), "deep-jsonl": (str(deep_line), "nested"),
            "lone-surrogate": (str(surrogate), "invalid character")}


@pytest.mark.parametrize("name", ["binary", "fake-parquet", "deep-json", "deep-jsonl", "lone-surrogate"])
@pytest.mark.parametrize("command", ["plan", "train"])
def test_corrupt_datasets(name, command, tmp_path, model_dir, capsys, monkeypatch):
    monkeypatch.setenv("TUNEPLAN_FAKE_FREE_BYTES", "1")  # never launch
    path, word = _datasets(tmp_path)[name]
    if command == "plan":
        argv = ["plan", "--model", str(model_dir), "--vram", "8GiB", "--dataset", path]
    else:
        argv = ["train", "--model", str(model_dir), "--dataset", path, "--runs-dir", str(tmp_path / "runs"),
                "--method", "lora", "--seq-len", "64", "--batch", "1", "--grad-accum", "1",
                "--grad-checkpointing", "off", "--optimizer", "adamw", "--attn", "sdpa", "--fused-ce", "on",
                "--packing", "off", "--compute-dtype", "float32"]
    line = _one_line(argv, capsys)
    assert word in line, line


@pytest.mark.parametrize("change, word", [
    ({"num_hidden_layers": 1e12}, "num_hidden_layers"), ({"num_hidden_layers": 10**12}, "num_hidden_layers"),
    ({"num_hidden_layers": 10**7}, "num_hidden_layers"), ({"hidden_size": 10**30}, "hidden_size"),
    ({"vocab_size": 10**20}, "vocab_size"), ({"hidden_size": None}, "hidden_size"),
    ({"num_hidden_layers": None}, "num_hidden_layers"),
])
def test_absurd_or_incomplete_config_json(change, word, model_dir, capsys):
    cfg = json.loads((model_dir / "config.json").read_text())
    for key, value in change.items():
        if value is None:
            del cfg[key]  # left out: the planner would take a ~7B model's defaults
        else:
            cfg[key] = value
    (model_dir / "config.json").write_text(json.dumps(cfg))
    line = _one_line(["plan", "--model", str(model_dir), "--vram", "8GiB"], capsys)
    assert word in line and "config.json" in line, line


def test_the_sample_dataset_still_plans(model_dir, capsys):
    assert main(["plan", "--model", str(model_dir), "--vram", "8GiB", "--dataset", str(SAMPLE_CHAT)]) == 0


# --- issue 19, item 6: a dataset that is not a file, or never ends -----------------------------

@pytest.mark.parametrize("kind, word", [("fifo", "FIFO"), ("dev-zero", "character device"),
                                        ("one-50mb-line", "longer than 16 MiB"),
                                        ("fifo-json", "FIFO"), ("dev-zero-csv", "character device")])
@pytest.mark.parametrize("command", ["plan", "train"])
def test_a_dataset_that_is_a_fifo_a_device_or_one_huge_line_is_one_line(kind, word, command, tmp_path, model_dir,
                                                                        capsys, monkeypatch, no_hang):
    import os
    import resource

    monkeypatch.setenv("TUNEPLAN_FAKE_FREE_BYTES", "1")  # never launch
    suffix = {"fifo-json": ".json", "dev-zero-csv": ".csv"}.get(kind, ".jsonl")
    path = tmp_path / f"data{suffix}"
    if kind.startswith("fifo"):
        os.mkfifo(path)
    elif kind.startswith("dev-zero"):
        path.symlink_to("/dev/zero")
    else:
        with open(path, "w") as f:
            f.write('{"text": "' + "x" * (50 << 20) + '"}\n')
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if command == "plan":
        argv = ["plan", "--model", str(model_dir), "--vram", "8GiB", "--dataset", str(path)]
    else:
        argv = ["train", "--model", str(model_dir), "--dataset", str(path), "--runs-dir", str(tmp_path / "runs"),
                "--method", "lora", "--seq-len", "64", "--batch", "1", "--grad-accum", "1",
                "--grad-checkpointing", "off", "--optimizer", "adamw", "--attn", "sdpa", "--fused-ce", "on",
                "--packing", "off", "--compute-dtype", "float32"]
    line = _one_line(argv, capsys)
    assert word in line, line
    grew_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grew_kib < 200 * 1024, grew_kib  # bounded: /dev/zero never ends, the line is 50 MB
