"""Multi-GPU runs through `accelerate launch`: the config, the command, the rank helpers, and
a real two-process DDP LoRA run of the tiny model on the CPU (gloo)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from planner.setup import TrainSetup
from tiny_runs import tiny_config
from tuneplan.events import ADAPTER_DIR, parse_event, read_events, read_status
from tuneplan.training import distributed


def _yaml_load(path):
    import yaml  # PyYAML comes with accelerate

    return yaml.safe_load(path.read_text())


def test_ddp_config_round_trips_through_yaml(tmp_path):
    setup = TrainSetup(num_gpus=4, strategy="ddp", compute_dtype="bfloat16")
    path = distributed.write_accelerate_config(tmp_path, setup, main_process_port=29555)
    assert path.name == distributed.ACCELERATE_CONFIG_FILE and path.parent == tmp_path
    data = _yaml_load(path)
    assert data == distributed.accelerate_config(setup, main_process_port=29555)
    assert data["distributed_type"] == "MULTI_GPU" and data["num_processes"] == 4
    assert data["mixed_precision"] == "bf16" and data["num_machines"] == 1 and "fsdp_config" not in data


def test_fsdp_config_shards_and_keeps_our_checkpointing(tmp_path):
    setup = TrainSetup(num_gpus=8, strategy="fsdp", method="qlora", compute_dtype="float16")
    data = _yaml_load(distributed.write_accelerate_config(tmp_path, setup, cpu_offload=True))
    fc = data["fsdp_config"]
    assert data["distributed_type"] == "FSDP" and data["mixed_precision"] == "fp16"
    assert fc["fsdp_sharding_strategy"] == "FULL_SHARD" and fc["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fc["fsdp_offload_params"] is True
    from_setup = distributed.accelerate_config(replace(setup, cpu_offload=True))["fsdp_config"]
    assert from_setup["fsdp_offload_params"] is True  # the run's setup carries the plan's offload
    assert distributed.accelerate_config(setup)["fsdp_config"]["fsdp_offload_params"] is False
    # the model's own non-reentrant checkpointing (contract step 2), not a second one from FSDP
    assert fc["fsdp_activation_checkpointing"] is False
    # rank 0 loads, the others receive the weights (accelerate requires both together)
    assert fc["fsdp_cpu_ram_efficient_loading"] is True and fc["fsdp_sync_module_states"] is True


def test_multi_node_config_needs_a_whole_number_of_gpus_per_machine():
    setup = TrainSetup(num_gpus=16, strategy="fsdp")
    cfg = distributed.accelerate_config(setup, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1")
    assert cfg["num_machines"] == 2 and cfg["machine_rank"] == 1 and cfg["main_process_ip"] == "10.0.0.1"
    assert cfg["num_processes"] == 16
    with pytest.raises(ValueError, match="multiple of num_machines"):
        distributed.accelerate_config(replace(setup, num_gpus=12), num_machines=8)


def test_worker_command_plain_for_one_gpu_accelerate_for_several(tmp_path):
    cmd, env = distributed.worker_command(tmp_path, TrainSetup())
    assert cmd[1:] == ["-m", "tuneplan.training.runner", str(tmp_path), "--worker"] and env == {}
    assert not (tmp_path / distributed.ACCELERATE_CONFIG_FILE).exists()
    cmd, env = distributed.worker_command(tmp_path, TrainSetup(num_gpus=2, strategy="ddp"))
    cfg = tmp_path / distributed.ACCELERATE_CONFIG_FILE
    assert cmd[1:5] == ["-m", "accelerate.commands.launch", "--config_file", str(cfg)]
    assert cmd[5:] == ["-m", "tuneplan.training.runner", str(tmp_path), "--worker"]
    assert _yaml_load(cfg)["num_processes"] == 2


def test_fsdp_on_cpu_says_it_runs_ddp(tmp_path, monkeypatch):
    monkeypatch.setenv(distributed.CPU_ENV, "1")
    cmd, env = distributed.worker_command(tmp_path, TrainSetup(num_gpus=2, strategy="fsdp"))
    assert env == {"ACCELERATE_USE_CPU": "true"}
    assert _yaml_load(tmp_path / distributed.ACCELERATE_CONFIG_FILE)["distributed_type"] == "MULTI_GPU"
    warning = [e for e in read_events(tmp_path) if e.kind == "message"]
    assert warning and "FSDP needs GPUs" in warning[0].text and "DDP" in warning[0].text


@pytest.mark.slow  # imports torch (memory_fields)
def test_rank_helpers_read_the_launcher_environment(monkeypatch):
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.rank() == 0 and distributed.world_size() == 1 and distributed.is_main_process()
    assert distributed.sync_flags(True, False) == (True, False)  # not distributed: unchanged
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (distributed.rank(), distributed.local_rank(), distributed.world_size()) == (3, 1, 4)
    assert not distributed.is_main_process()
    fields = distributed.memory_fields()
    assert fields["rank"] == 3 and fields["local_rank"] == 1
    # what the memory event says depends on the device: the process's RSS on the CPU, the torch
    # peaks of its GPU on CUDA (and then no RSS); each must be a real count, not just present
    if fields["device"] == "cpu":
        assert isinstance(fields["rss_bytes"], int) and fields["rss_bytes"] > 0
        assert "torch_allocated_peak_bytes" not in fields
    else:
        assert fields["device"].startswith("cuda:") and "rss_bytes" not in fields
        allocated, reserved = fields["torch_allocated_peak_bytes"], fields["torch_reserved_peak_bytes"]
        assert isinstance(allocated, int) and isinstance(reserved, int) and 0 <= allocated <= reserved


@pytest.mark.slow
def test_two_process_ddp_lora_run_on_cpu(tiny_model, runs_root, monkeypatch):
    """A real `accelerate launch` of two gloo ranks through the supervisor: the loss falls,
    one coherent events.jsonl (rank 0's metrics, both ranks' memory), one adapter."""
    from tuneplan.services.launcher import prepare_run, start_process

    monkeypatch.setenv(distributed.CPU_ENV, "1")
    config = tiny_config(tiny_model, setup={"num_gpus": 2, "strategy": "ddp"},
                         training={"max_steps": 16, "save_steps": 8, "logging_steps": 2})
    assert config.effective_batch() == 2 * config.setup.micro_batch
    run_dir = prepare_run(config, runs_root)
    proc = start_process(run_dir, detach=False)
    assert proc.wait(timeout=300) == 0, (run_dir / "train.log").read_text()[-3000:]

    status = read_status(run_dir)
    assert status.phase == "done" and status.step == 16 and status.error is None
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    events = [parse_event(json.loads(line)) for line in lines]  # every line is one whole JSON object
    phases = [e.phase for e in events if e.kind == "phase"]
    assert phases == ["queued", "loading", "tokenizing", "training", "evaluating", "saving", "done"]
    logs = [e for e in events if e.kind == "log"]
    assert [e.step for e in logs] == [2, 4, 6, 8, 10, 12, 14, 16]  # rank 0 only: no duplicates
    assert logs[-1].loss < logs[0].loss - 0.2, [e.loss for e in logs]
    memory = [e for e in events if e.kind == "memory"]
    assert {e.rank for e in memory} == {0, 1}
    assert all((e.rss_bytes or 0) > 0 for e in memory)
    for rank in (0, 1):
        assert [e.step for e in memory if e.rank == rank] == [e.step for e in logs]
    assert [e.step for e in events if e.kind == "checkpoint"] == [8, 16]
    ckpt = run_dir / "checkpoints" / "checkpoint-16"
    assert (ckpt / "rng_state_0.pth").exists() and (ckpt / "rng_state_1.pth").exists()
    adapters = list(run_dir.rglob("adapter_model.safetensors"))
    final = run_dir / ADAPTER_DIR / "adapter_model.safetensors"
    assert final in adapters and [a for a in adapters if "checkpoint-" not in str(a)] == [final]
    assert not (run_dir / ADAPTER_DIR / "model.safetensors").exists()
    cfg = _yaml_load(run_dir / distributed.ACCELERATE_CONFIG_FILE)
    assert cfg["num_processes"] == 2 and cfg["distributed_type"] == "MULTI_GPU"

    from tuneplan.ui.run_view import RunFollower  # the dashboard's fold: one row per rank

    follower = RunFollower(run_dir)
    follower.poll()
    rows = follower.snapshot().gpu_rows
    assert [r.rank for r in rows] == [0, 1] and all(r.step == 16 and r.rss_bytes for r in rows)


@pytest.mark.slow
def test_out_of_memory_on_the_ranks_replans_and_resumes(tiny_model, runs_root, monkeypatch):
    """An OOM raised on the ranks (fault injection) ends `accelerate launch` with exit 1; the
    supervisor still sees it (the ranks' status error), halves the micro-batch, doubles the
    accumulation and resumes both ranks from the last checkpoint with the same effective batch."""
    from tuneplan.services.launcher import prepare_run, start_process

    monkeypatch.setenv(distributed.CPU_ENV, "1")
    config = tiny_config(tiny_model, setup={"num_gpus": 2, "strategy": "ddp"},
                         training={"max_steps": 8, "save_steps": 4, "logging_steps": 2},
                         debug={"oom_at_step": 6, "oom_micro_batch_above": 2})
    run_dir = prepare_run(config, runs_root)
    assert start_process(run_dir, detach=False).wait(timeout=300) == 0, (run_dir / "train.log").read_text()[-3000:]
    status = read_status(run_dir)
    assert status.phase == "done" and status.step == 8 and status.attempt == 1
    events = list(read_events(run_dir))
    replans = [e for e in events if e.kind == "replan"]
    assert len(replans) == 1 and replans[0].changes == {"micro_batch": [4, 2], "grad_accum": [1, 2]}
    assert replans[0].effective_batch == config.effective_batch() == 8
    assert replans[0].resume_from.endswith("checkpoint-4")
    assert [e.step for e in events if e.kind == "log"] == [2, 4, 6, 8]
    assert (run_dir / ADAPTER_DIR / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_save_and_stop_are_agreed_by_both_ranks(tiny_model, runs_root, monkeypatch):
    """`tuneplan save` (a file only rank 0 reads) and `tuneplan stop` (SIGTERM) reach both
    ranks at the same step: one checkpoint with both ranks' RNG states, then `stopped`."""
    import time

    from tuneplan.services import runs
    from tuneplan.services.launcher import prepare_run, start_process

    monkeypatch.setenv(distributed.CPU_ENV, "1")
    config = tiny_config(tiny_model, setup={"num_gpus": 2, "strategy": "ddp"},
                         training={"max_steps": 60, "save_steps": 1000, "logging_steps": 1},
                         debug={"step_sleep_seconds": 0.3})
    run_dir = prepare_run(config, runs_root)
    proc = start_process(run_dir, detach=False)

    def wait_step(n):
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            status = read_status(run_dir)
            if status is not None and status.step >= n:
                return status.step
            assert proc.poll() is None, (run_dir / "train.log").read_text()[-3000:]
            time.sleep(0.2)
        raise AssertionError("run did not reach step %d" % n)

    wait_step(2)
    runs.request_save(run_dir)
    deadline = time.monotonic() + 120
    while not [e for e in read_events(run_dir) if e.kind == "checkpoint"] and time.monotonic() < deadline:
        time.sleep(0.2)
    runs.request_stop(run_dir)
    assert proc.wait(timeout=240) == 0
    status = read_status(run_dir)
    assert status.phase == "stopped" and status.step < 60
    saved = [e.step for e in read_events(run_dir) if e.kind == "checkpoint"]
    assert len(saved) == 2 and saved[-1] == status.step  # the requested save, then the one at stop
    for step in saved:
        ckpt = run_dir / "checkpoints" / f"checkpoint-{step}"
        assert (ckpt / "rng_state_0.pth").exists() and (ckpt / "rng_state_1.pth").exists()
