"""`tuneplan plan` end to end through the real CLI (NVML faked only at the pynvml boundary)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fake_nvml import FakeNVML, NVMLError, gpu_device
from plan_cli import run, run_json
from tuneplan.services import gpu as gpu_service

ROOT = Path(__file__).resolve().parents[3]
MiB = 1024**2




@pytest.fixture
def nvml(monkeypatch):
    def install(devices, fail=False):
        monkeypatch.setattr(gpu_service, "_default", gpu_service.GpuProbe(nvml=FakeNVML(
            [gpu_device(*d) for d in devices],
            init_error=NVMLError("NVML Shared Library Not Found") if fail else None)))
    return install


# -- must-show plans --------------------------------------------------------------------------
def test_8b_on_3060_plans_qlora_with_table(capsys):
    code, out, err = run(capsys, "--model", "llama-3.1-8b", "--gpu", "rtx-3060-12gb")
    assert code == 0
    assert "FITS" in out and "QLoRA" in out
    for part in ("Configuration", "Memory on one GPU", "on the card (nvidia-smi)", "headroom", "Speed",
                 "Time", "Cost", "Why"):
        assert part in out, part
    assert "█" in out
    assert err.strip().startswith("tuneplan plan: fits:") and len(err.strip().splitlines()) == 1


def test_70b_on_a100_plans_qlora_json(capsys):
    code, data, _ = run_json(capsys, "--model", "llama-3.1-70b", "--gpu", "a100-80gb")
    assert code == 0 and data["fits"] is True
    assert data["config"]["method"] == "qlora"
    for key in ("fits", "model", "config", "memory", "gpu", "throughput", "alternatives", "reasons"):
        assert key in data
    assert set(data["model"]) >= {"name", "architecture", "parameters", "trainable_parameters"}
    assert data["model"]["architecture"] == "llama" and data["model"]["parameters"] > 70e9
    assert set(data["memory"]) >= {"torch_peak_bytes", "device_bytes", "components"}
    assert sum(data["memory"]["components"].values()) >= data["memory"]["torch_peak_bytes"]
    assert set(data["gpu"]) >= {"name", "memory_bytes", "count"}
    assert data["throughput"]["tokens_per_second"] > 0
    for knob in ("method", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "micro_batch", "grad_accum",
                 "seq_len", "grad_checkpointing", "optimizer", "attn", "fused_ce", "compute_dtype"):
        assert knob in data["config"], knob
    assert data["reasons"] and all(isinstance(r, str) for r in data["reasons"])


def test_small_model_on_h100_is_lora_without_checkpointing(capsys):
    code, data, _ = run_json(capsys, "--model", "qwen2.5-0.5b", "--gpu", "h100")
    assert code == 0
    assert data["config"]["method"] == "lora" and data["config"]["grad_checkpointing"] is False


# -- fixed vs solved ---------------------------------------------------------------------------
def test_given_knobs_are_fixed_and_listed(capsys):
    code, data, _ = run_json(capsys, "--model", "llama-3.1-8b", "--gpu", "4090", "--batch", "1", "--lora-r", "32",
                             "--lora-targets", "q_proj,v_proj", "--grad-checkpointing", "on", "--method", "qlora")
    assert code == 0
    c = data["config"]
    assert (c["micro_batch"], c["grad_accum"], c["lora_rank"], c["lora_targets"], c["grad_checkpointing"],
            c["method"]) == (1, 16, 32, ["q_proj", "v_proj"], True, "qlora")
    assert set(data["fixed"]) == {"micro_batch", "lora_rank", "lora_targets", "grad_checkpointing", "method"}


def test_vram_plans_for_a_size(capsys):
    code, data, _ = run_json(capsys, "--model", "qwen2.5-7b", "--vram", "24GiB")
    assert code == 0 and data["gpu"]["memory_bytes"] == 24 * 1024**3 and data["gpu"]["source"] == "vram"
    code, data, _ = run_json(capsys, "--model", "qwen2.5-7b", "--gpu", "a100-80gb", "--vram", "20GiB")
    assert data["memory"]["usable_bytes"] == 20 * 1024**3 and data["throughput"]["tokens_per_second"]


def test_does_not_fit_exits_1_and_says_what_would(capsys):
    code, out, err = run(capsys, "--model", "llama-3.1-70b", "--gpu", "rtx-3060-12gb")
    assert code == 1
    assert "DOES NOT FIT" in out and "What would make it fit" in out and "--gpu" in out
    assert len(err.strip().splitlines()) == 1 and "does not fit" in err
    code, data, _ = run_json(capsys, "--model", "llama-3.1-70b", "--gpu", "rtx-3060-12gb")
    assert code == 1 and data["fits"] is False and data["suggestions"]
    assert data["memory"]["device_bytes"] > data["memory"]["budget_bytes"] and data["time"]["seconds"] is None


# -- bad input: exit 2, one line -----------------------------------------------------------------
@pytest.mark.parametrize("argv,needle", [
    (["--model", "llama-3.1-8c", "--gpu", "4090"], "llama-3.1-8b"),          # unknown model, suggestion
    (["--model", "llama-3.1-8b", "--gpu", "rtx 4009"], "rtx-4090"),          # unknown GPU, suggestion
    (["--model", "llama-3.1-8b", "--gpu", "4090", "--batch", "0"], "--batch must be > 0"),
    (["--model", "llama-3.1-8b", "--gpu", "4090", "--seq-len", "-5"], "--seq-len must be > 0"),
    (["--model", "llama-3.1-8b", "--gpu", "4090", "--lora-r", "two"], "--lora-r must be a whole number"),
    (["--model", "llama-3.1-8b", "--vram", "0GiB"], "--vram must be > 0"),
    (["--model", "llama-3.1-8b", "--vram", "lots"], "--vram must be a size"),
    (["--model", "llama-3.1-8b", "--gpu", "4090", "--lora-dropout", "1.5"], "--lora-dropout"),
    (["--model", "llama-3.1-8b", "--gpu", "4090", "--method", "fancy"], "--method must be"),
    (["--model", "llama-3.1-8b", "--gpu", "4090", "--optimizer", "sgd"], "--optimizer must be"),
    (["--model", "llama-3.1-8b", "--gpu", "4090", "--grad-checkpointing", "maybe"], "--grad-checkpointing"),
    (["--model", "llama-3.1-8b", "--gpu", "4090", "--method", "full", "--lora-r", "8"], "--method full"),
    (["--model", "llama-3.1-8b", "--gpu", "4090", "--method", "lora", "--quant-type", "fp4"], "--method lora"),
    (["--model", "llama-3.1-8b", "--gpu", "4090", "--batch", "4", "--grad-accum", "2", "--effective-batch", "16"],
     "not --effective-batch 16"),
    (["--model", "llama-3.1-8b", "--gpu", "4090", "--lora-targets", "q_proj,wq"], "q_proj, k_proj"),
    (["--gpu", "4090"], "no model given"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, needle):
    with_exit = None
    try:
        code, out, err = run(capsys, *argv)
    except SystemExit as exc:  # argparse-level errors exit from the parser
        with_exit = exc.code
        captured = capsys.readouterr()
        code, out, err = with_exit, captured.out, captured.err
    assert code == 2, (argv, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err


def test_unknown_lora_target_names_the_real_modules(capsys):
    code, _, err = run(capsys, "--model", "qwen2.5-0.5b", "--gpu", "4090", "--lora-targets", "query")
    assert code == 2
    for real in ("q_proj", "v_proj", "gate_proj", "down_proj"):
        assert real in err


def test_seq_len_beyond_context_warns_naming_both(capsys):
    code, out, err = run(capsys, "--model", "qwen2.5-0.5b", "--gpu", "h100", "--seq-len", "100000", "--json")
    data = json.loads(out)
    context = data["model"]["context_length"]
    assert data["config"]["seq_len"] == 100000 > context  # as asked, with the warning
    warning = [line for line in err.splitlines() if "warning" in line][0]
    assert "100000" in warning and str(context) in warning and "RoPE scaling" in warning
    assert data["warnings"]


def test_bf16_on_a_card_without_it_falls_back_to_fp16(capsys):
    code, out, err = run(capsys, "--model", "qwen2.5-0.5b", "--gpu", "t4", "--dtype", "bf16", "--json")
    assert code == 0
    assert json.loads(out)["config"]["compute_dtype"] == "float16"
    assert "float16" in err and "bfloat16" in err


def test_dataset_file_sets_sequence_length_and_tokens(capsys, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "word " * n}, {"role": "assistant", "content": "ok " * 20}]}
            for n in [40] * 90 + [3000] * 10]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    code, out, _ = run(capsys, "--model", "qwen2.5-0.5b", "--gpu", "4090", "--dataset", str(data), "--json")
    assert code == 0
    plan = json.loads(out)
    seq = plan["config"]["seq_len"]
    assert seq % 128 == 0 and seq >= 750  # p99 covers the long examples (~4 chars per token offline)
    assert plan["time"]["dataset_tokens_assumed"] is False and plan["time"]["dataset_tokens"] > 10_000
    assert any("train.jsonl" in n for n in plan["notes"])
    code, _, err = run(capsys, "--model", "qwen2.5-0.5b", "--gpu", "4090", "--dataset", str(data), "--dataset-tokens", "5")
    assert code == 2 and "--dataset" in err


# -- without --gpu / --vram: NVML ------------------------------------------------------------------
def test_no_gpu_and_no_target_asks_for_one(capsys, nvml):
    nvml([], fail=True)
    code, out, err = run(capsys, "--model", "llama-3.1-8b")
    assert code == 2
    assert "no GPU" in err and "--gpu" in err and "--vram" in err
    assert len(err.strip().splitlines()) == 1


def test_plans_for_the_gpu_nvml_finds(capsys, nvml):
    nvml([("NVIDIA GeForce RTX 4090", 24564, 4000, (8, 9))])
    code, data, _ = run_json(capsys, "--model", "llama-3.1-8b")
    assert code == 0
    assert data["gpu"]["source"] == "nvml" and data["gpu"]["key"] == "rtx-4090"
    assert data["gpu"]["free_bytes"] == (24564 - 4000) * MiB
    assert data["memory"]["usable_bytes"] == (24564 - 4000) * MiB
    assert any("NVML" in n for n in data["notes"])


def test_a_real_plan_run_loads_no_torch():
    code = (
        "import sys, json\nfrom tuneplan.cli import main\n"
        "rc = main(['plan', '--model', 'llama-3.1-8b', '--gpu', 'rtx-3060-12gb', '--json'])\n"
        "print(json.dumps({'rc': rc, 'mods': sorted(sys.modules)}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0
    loaded = {m.split(".")[0] for m in result["mods"]}
    assert not loaded & {"torch", "transformers", "peft", "trl", "bitsandbytes", "textual", "rich"}


# -- several GPUs -----------------------------------------------------------------------------------------
def test_a_named_card_is_one_card_and_more_cards_are_the_fix(capsys):
    """--gpu names one card: the plan is for one, never silently for several; more cards come
    back as a suggestion (exit 1)."""
    for argv in (("--model", "mixtral-8x7b", "--gpu", "a100-80gb"),
                 ("--model", "llama-3.1-70b", "--gpu", "h100", "--method", "lora")):
        code, data, _ = run_json(capsys, *argv)
        assert code == 1 and data["fits"] is False and data["gpu"]["count"] == 1, argv
        assert data["config"]["num_gpus"] == 1
        assert any(s.startswith("More GPUs") and "--gpus" in s for s in data["suggestions"]), data["suggestions"]


def test_70b_lora_on_h100_with_fsdp_asked_proposes_several_gpus(capsys):
    code, out, err = run(capsys, "--model", "llama-3.1-70b", "--gpu", "h100", "--method", "lora", "--strategy", "fsdp")
    assert code == 0  # a multi-GPU strategy asked for, the count left to the solver
    assert "cannot hold" in out and "FSDP" in out and "Memory per GPU" in out
    assert "QLoRA on one" in out  # the one-card alternative is named
    code, data, _ = run_json(capsys, "--model", "llama-3.1-70b", "--gpu", "h100", "--method", "lora",
                             "--strategy", "fsdp")
    n = data["gpu"]["count"]
    assert n > 1 and data["config"]["num_gpus"] == n and data["parallel"]["strategy"] == "fsdp"
    assert data["parallel"]["single_gpu_need_bytes"] > data["memory"]["budget_bytes"] >= data["memory"]["device_bytes"]
    assert data["config"]["effective_batch"] == 16 and data["parallel"]["nodes"] == 1


def test_gpus_fixed_to_one_does_not_fit_and_names_more_gpus(capsys):
    code, data, err = run_json(capsys, "--model", "llama-3.1-70b", "--gpu", "h100", "--method", "lora", "--gpus", "1")
    assert code == 1 and data["fits"] is False and data["gpu"]["count"] == 1
    assert any(s.startswith("More GPUs") and "--strategy fsdp" in s for s in data["suggestions"])


def test_gpus_and_strategy_fixed(capsys):
    code, data, _ = run_json(capsys, "--model", "llama-3.1-8b", "--gpu", "a100-80gb", "--gpus", "4")
    assert code == 0 and data["gpu"]["count"] == 4 and data["parallel"]["strategy"] == "ddp"
    code, data, _ = run_json(capsys, "--model", "llama-3.1-8b", "--gpu", "a100-80gb", "--gpus", "4", "--strategy", "fsdp")
    assert code == 0 and data["parallel"]["strategy"] == "fsdp"
    code, data, _ = run_json(capsys, "--model", "llama-3.1-70b", "--gpu", "a100-80gb", "--method", "lora", "--gpus",
                             "16", "--gpus-per-node", "8")
    assert code == 0 and data["parallel"]["nodes"] == 2
    code, data, _ = run_json(capsys, "--model", "llama-3.1-70b", "--gpu", "rtx-4090", "--gpus", "2",
                             "--strategy", "fsdp", "--cpu-offload", "on")
    assert data["parallel"]["cpu_offload"] is True and data["parallel"]["host_offload_bytes"] > 0


@pytest.mark.parametrize("argv, words", [
    (("--gpus", "0"), ("--gpus",)),
    (("--gpus", "two"), ("--gpus",)),
    (("--strategy", "zero3"), ("--strategy", "ddp", "fsdp")),
    (("--gpus", "2", "--strategy", "ddp", "--cpu-offload", "on"), ("--cpu-offload", "fsdp")),
    (("--gpus", "1", "--strategy", "ddp"), ("--strategy ddp", "--gpus 2")),
])
def test_bad_multi_gpu_flags_exit_2_in_one_line(capsys, argv, words):
    code, out, err = run(capsys, "--model", "llama-3.1-8b", "--gpu", "h100", *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert all(w in err for w in words), err


def test_nvml_with_several_gpus_plans_all_of_them(capsys, nvml):
    nvml([("NVIDIA A100-SXM4-80GB", 81920, 1000, (8, 0))] * 4)
    code, data, _ = run_json(capsys, "--model", "llama-3.1-8b")
    assert code == 0 and data["gpu"]["count"] == 4 and data["gpu"]["detected"] == 4
    assert data["parallel"]["strategy"] == "ddp"
    code, _, err = run(capsys, "--model", "llama-3.1-8b", "--gpus", "8")
    assert code == 2 and "NVML sees 4" in err


# -- memory sizes -------------------------------------------------------------------------------
@pytest.mark.parametrize("text, gib", [("24gb", 24), ("24GB", 24), ("24", 24), ("24GiB", 24), ("24576MiB", 24),
                                       ("24576MB", 24), ("11.5 GiB", 11.5)])
def test_one_size_parser_for_plan_and_the_wizard(text, gib):
    """`--vram` and the wizard's dry-run box read a size the same way: GPU makers' GB are GiB."""
    from tuneplan.services.planning import parse_size
    from tuneplan.ui.target import dry_run_target, parse_memory

    assert parse_size(text) == parse_memory(text) == int(gib * 1024**3)
    assert dry_run_target(text).gpu.memory_bytes == parse_size(text)


def test_vram_in_gb_is_read_as_gib_and_says_so(capsys):
    code, data, err = run_json(capsys, "--model", "llama-3.1-8b", "--vram", "24gb")
    assert code == 0 and data["gpu"]["memory_bytes"] == 24 * 1024**3
    assert "24gb read as 24 GiB" in err


@pytest.mark.parametrize("value", ["-5GiB", "0GiB", "-1"])
def test_vram_not_above_zero_is_one_clear_line(capsys, value):
    code, out, err = run(capsys, "--model", "llama-3.1-8b", "--vram", value)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--vram must be > 0" in err and value in err and "expected one argument" not in err


# -- the explanation agrees with the table ------------------------------------------------------
def test_gemma2_plans_the_eager_attention_it_runs(capsys):
    code, data, _ = run_json(capsys, "--model", "gemma-2-9b", "--gpu", "rtx-4090")
    assert data["config"]["attn"] == "eager"  # transformers has no soft-capping in SDPA/flash
    assert any("eager attention" in r for r in data["reasons"])
    code, out, _ = run(capsys, "--model", "gemma-2-9b", "--gpu", "rtx-4090")
    row = next(line for line in out.splitlines() if line.strip().startswith("attention"))
    assert "eager" in row and "sdpa" not in row
    code, data, err = run_json(capsys, "--model", "gemma-2-9b", "--gpu", "rtx-4090", "--attn", "sdpa")
    assert data["config"]["attn"] == "eager" and any("--attn sdpa" in w for w in data["warnings"])


def test_packing_is_in_the_table(capsys):
    code, out, _ = run(capsys, "--model", "llama-3.1-8b", "--gpu", "rtx-4090")
    row = next(line for line in out.splitlines() if line.strip().startswith("packing"))
    assert "on" in row and row.split()[-1] == "default"


def test_preset_refit_table_says_who_changed_what(capsys):
    code, out, err = run(capsys, "--preset", "llama-3.1-8b-lora-24gb", "--gpu", "rtx-3060-12gb")
    assert code == 0 and "method LoRA -> QLoRA" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("method "))
    assert "QLoRA" in row and row.split()[-1] == "re-fit"
    assert "as asked" not in out and " you\n" not in out


@pytest.mark.parametrize("argv, phrase", [
    (("--method", "full", "--lora-r", "8"), "--lora-r only applies to"),
    (("--method", "full", "--lora-r", "8", "--lora-alpha", "16"), "--lora-r, --lora-alpha only apply to"),
])
def test_contradiction_messages_agree_in_number(capsys, argv, phrase):
    code, _, err = run(capsys, "--model", "llama-3.1-8b", "--gpu", "4090", *argv)
    assert code == 2 and phrase in err


def test_broken_jsonl_message_is_whole(tmp_path):
    from tuneplan.errors import UserError
    from tuneplan.dataset_formats import read_local_rows
    from tuneplan.services.dataset_preview import preview_dataset

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "a\x01b"}\n')
    with pytest.raises(UserError) as err:
        preview_dataset(str(bad))
    assert "line 2" in str(err.value) and "Invalid control character at column" in str(err.value)
    with pytest.raises(Exception) as err:
        read_local_rows(str(bad))
    assert "line 2" in str(err.value) and "Invalid control character at column" in str(err.value)


def test_the_bundled_sample_dataset_plans_as_train_takes_it(capsys):
    """`--dataset tuneplan:sample-chat` is measured (its tokens counted) as `train` and `compare`
    take it, and the printed train line keeps the portable name."""
    code, out, err = run(capsys, "--model", "tuneplan:tiny", "--dataset", "tuneplan:sample-chat", "--json")
    data = json.loads(out)
    assert code == 0 and data["time"]["dataset_tokens"] > 0 and not data["time"]["dataset_tokens_assumed"]
    assert "--dataset tuneplan:sample-chat" in data["command"]
