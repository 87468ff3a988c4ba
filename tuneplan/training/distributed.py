"""Multi-GPU runs through `accelerate launch`: the run's accelerate config, the launch
command, and helpers each rank uses.

A run whose setup has `num_gpus > 1` (or strategy `fsdp`) is started by the supervisor
(`tuneplan.training.runner`) as

    python -m accelerate.commands.launch --config_file RUN_DIR/accelerate.yaml \\
        -m tuneplan.training.runner RUN_DIR --worker

instead of one worker process. `accelerate launch` (torchrun underneath) starts one worker
per GPU; every worker runs the same code (`runner.run_worker`), the Trainer wraps the model
in DDP or FSDP from the environment accelerate sets. The ranks share the run directory:

- rank 0 owns `status.json` and writes every event (phases, metrics, checkpoints);
  the other ranks write only `memory` / `memory_probe` events carrying their `rank`
  (appends of one short line each: on a local file system concurrent `O_APPEND` writes of
  a line land whole, so `events.jsonl` stays one coherent, merged file);
- stop (SIGTERM) and save requests are agreed by all ranks at each step end
  (`sync_flags`, an all-reduce of the flags): every rank checkpoints or stops at the same
  step, as the collectives require;
- the final adapter is saved through `Trainer.save_model` (gathers FSDP shards; writes
  on rank 0 only).

CPU (tests, no GPU): accelerate's simple launcher starts ONE process when `use_cpu` is set
(several CPU processes need mpirun), so on a machine without an NVIDIA device the config
keeps the torchrun launcher (`MULTI_GPU`) and the ranks get `ACCELERATE_USE_CPU=true`:
transformers then initialises accelerate with `cpu=True`, which picks the gloo backend.
FSDP cannot run there: accelerate only enables FSDP for GPU-class devices (see
`worker_command`), so a CPU run asked for FSDP trains with DDP and says so in its events.

Nothing here imports torch at module level (the supervisor imports this module).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ACCELERATE_CONFIG_FILE = "accelerate.yaml"
DEFAULT_PORT = 29500
CPU_ENV = "TUNEPLAN_DISTRIBUTED_CPU"
"""Set to 1 to run a multi-process run on the CPU (gloo) even where a GPU exists."""

_MIXED = {"bfloat16": "bf16", "float16": "fp16", "float32": "no"}


# -- ranks ------------------------------------------------------------------------------------
def rank() -> int:
    """Global rank of this process (0 when not launched distributed)."""
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    """Rank within this machine (the GPU index it uses)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def world_size() -> int:
    """Processes in the run (1 when not launched distributed)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_process() -> bool:
    """Rank 0 (or not distributed): the process that owns status.json and most events."""
    return rank() == 0


def is_distributed_setup(setup: Any) -> bool:
    """Whether a TrainSetup runs under `accelerate launch` (several GPUs, or FSDP)."""
    return setup.num_gpus > 1 or setup.strategy == "fsdp"


def sync_flags(*flags: bool) -> tuple[bool, ...]:
    """The flags OR-ed over all ranks (an all-reduce MAX); unchanged when not distributed.
    Every rank must call it at the same point (it is a collective)."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is always there in the training process
        return tuple(flags)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tuple(flags)
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(x) for x in t.tolist())


def memory_fields() -> dict[str, Any]:
    """This rank's memory for a `memory` event: `rank`, `local_rank`, and on CUDA the torch
    peaks (`torch_allocated_peak_bytes`, `torch_reserved_peak_bytes`) of its GPU; on the CPU
    the process's resident memory (`rss_bytes`). Bytes."""
    fields: dict[str, Any] = {"rank": rank(), "local_rank": local_rank()}
    try:
        import torch

        if torch.cuda.is_available():
            fields["device"] = f"cuda:{torch.cuda.current_device()}"
            fields["torch_allocated_peak_bytes"] = torch.cuda.max_memory_allocated()
            fields["torch_reserved_peak_bytes"] = torch.cuda.max_memory_reserved()
            return fields
    except ImportError:  # pragma: no cover
        pass
    fields["device"] = "cpu"
    import psutil

    try:
        fields["rss_bytes"] = int(psutil.Process().memory_info().rss)
    except (OSError, psutil.Error):
        fields["rss_bytes"] = None
    return fields


# -- the accelerate config --------------------------------------------------------------------
def cpu_only() -> bool:
    """No NVIDIA device on this machine (or TUNEPLAN_DISTRIBUTED_CPU=1): ranks run on the CPU."""
    if os.environ.get(CPU_ENV, "").strip() in ("1", "true", "yes"):
        return True
    return not (os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0"))


def accelerate_config(setup: Any, *, num_machines: int = 1, machine_rank: int = 0,
                      main_process_ip: str | None = None, main_process_port: int = DEFAULT_PORT,
                      cpu_offload: bool | None = None, fsdp_version: int | None = None,
                      cpu: bool = False) -> dict[str, Any]:
    """The `accelerate launch --config_file` dict for a TrainSetup (num_gpus = all processes
    over all machines).

    DDP -> `MULTI_GPU`; FSDP -> `FSDP` with FULL_SHARD, TRANSFORMER_BASED_WRAP (accelerate
    takes the layer class from the model's `_no_split_modules`; the Trainer adds peft's
    wrap policy for LoRA modules), BACKWARD_PRE prefetch, `use_orig_params: false` and
    `cpu_ram_efficient_loading` + `sync_module_states` (rank 0 loads the weights, the others
    receive them), SHARDED_STATE_DICT checkpoints (each rank saves its shard; the final
    adapter is gathered). Activation checkpointing stays the model's own non-reentrant
    checkpointing (contract step 2): FSDP's `activation_checkpointing` would add a second one
    and transformers refuses both at once. Mixed precision follows the compute dtype.
    `cpu=True` (ranks on the CPU, gloo): no `sync_module_states` / RAM-efficient loading
    (accelerate needs an accelerator device for them; every rank loads the small model)."""
    if fsdp_version is None:
        fsdp_version = int(os.environ.get("TUNEPLAN_FSDP_VERSION", "1"))
    if cpu_offload is None:
        cpu_offload = bool(getattr(setup, "cpu_offload", False))
    n = int(setup.num_gpus)
    if n < 1 or num_machines < 1 or n % num_machines:
        raise ValueError(f"num_gpus ({n}) must be a positive multiple of num_machines ({num_machines})")
    cfg: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": "FSDP" if setup.strategy == "fsdp" else "MULTI_GPU",
        "downcast_bf16": "no",
        "machine_rank": machine_rank,
        "main_training_function": "main",
        "mixed_precision": _MIXED.get(setup.compute_dtype, "no"),
        "num_machines": num_machines,
        "num_processes": n,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
        "gpu_ids": "all",
        "main_process_port": int(main_process_port),
    }
    if main_process_ip:
        cfg["main_process_ip"] = main_process_ip
    if setup.strategy == "fsdp":
        cfg["fsdp_config"] = {
            "fsdp_version": fsdp_version,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_sharding_strategy": "FULL_SHARD",
            "fsdp_backward_prefetch": "BACKWARD_PRE",
            "fsdp_forward_prefetch": False,
            "fsdp_offload_params": bool(cpu_offload),
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_use_orig_params": False,
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_sync_module_states": True,
            "fsdp_activation_checkpointing": False,
        }
        if cpu:
            cfg["fsdp_config"]["fsdp_cpu_ram_efficient_loading"] = False
            cfg["fsdp_config"]["fsdp_sync_module_states"] = False
        if fsdp_version == 2:
            fc = cfg["fsdp_config"]
            fc.pop("fsdp_sharding_strategy")
            fc.pop("fsdp_backward_prefetch")
            fc.pop("fsdp_forward_prefetch")
            fc.pop("fsdp_use_orig_params")
            fc.pop("fsdp_sync_module_states", None)
            fc["fsdp_reshard_after_forward"] = True
            fc["fsdp_cpu_ram_efficient_loading"] = False
    return cfg


def _yaml(value: Any, indent: int = 0) -> str:
    """A tiny YAML writer for the flat/one-level config (no dependency on PyYAML here)."""
    pad = " " * indent
    lines = []
    for k, v in value.items():
        if isinstance(v, dict):
            lines.append(f"{pad}{k}:")
            lines.append(_yaml(v, indent + 2))
        elif isinstance(v, bool):
            lines.append(f"{pad}{k}: {'true' if v else 'false'}")
        elif isinstance(v, (int, float)):
            lines.append(f"{pad}{k}: {v}")
        else:
            lines.append(f"{pad}{k}: {_quote(str(v))}")
    return "\n".join(lines)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def write_accelerate_config(run_dir: Path, setup: Any, **kwargs: Any) -> Path:
    """Write `RUN_DIR/accelerate.yaml` for the run (rewritten per attempt: after an OOM
    re-plan it still describes the run); return its path."""
    path = Path(run_dir) / ACCELERATE_CONFIG_FILE
    header = ("# accelerate config written by tuneplan for this run (see docs/multi-gpu.md).\n"
              "# On several machines: copy the run directory to each, set num_machines, machine_rank\n"
              "# (0 on the main machine), main_process_ip and main_process_port, then start the same\n"
              "# `python -m accelerate.commands.launch --config_file ... -m tuneplan.training.runner RUN_DIR "
              "--worker` on every machine.\n")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(header + _yaml(accelerate_config(setup, **kwargs)) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_device() -> str | None:
    """Where this rank loads the model (`modeling.load_for_training(device=...)`): None (the
    default: the GPU, else the CPU) for one process or CPU ranks; several CUDA ranks under
    DDP: the rank's own GPU `cuda:LOCAL_RANK` (before the trainer exists nothing has set the
    current device, so "cuda" would put every replica on GPU 0); under FSDP: host memory,
    from which FSDP moves each rank's shard to its GPU (a 70B model must never be loaded
    whole onto one GPU). Not yet exercised on GPUs (no CUDA machine here): the FSDP path
    follows accelerate's and peft's FSDP guides (load on the CPU, then shard)."""
    if world_size() == 1:
        return None
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    if not torch.cuda.is_available():
        return None
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "cpu"
    return f"cuda:{local_rank()}"


def save_final_model(trainer: Any, out: Path) -> None:
    """Save the final adapter (or model) of a run from every rank: one GPU saves directly;
    several go through `Trainer.save_model` (all ranks call it; rank 0 writes), FSDP first
    switched to a full state dict so the adapter is gathered, not sharded (the peft FSDP
    guide does the same)."""
    if world_size() == 1:
        trainer.model.save_pretrained(out)
        return
    if getattr(trainer, "is_fsdp_enabled", False):
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out))


def free_port() -> int:
    """A free TCP port on this machine for the rendezvous (several runs may share a box)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(run_dir: Path, config_file: Path, *, python: str | None = None) -> list[str]:
    """`python -m accelerate.commands.launch --config_file CFG -m tuneplan.training.runner RUN_DIR --worker`."""
    return [python or sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
            "-m", "tuneplan.training.runner", str(run_dir), "--worker"]


def worker_command(run_dir: Path, setup: Any, *, python: str | None = None) -> tuple[list[str], dict[str, str]]:
    """(command, extra environment) that starts one attempt of a run: the plain worker for
    one GPU, `accelerate launch` over `setup.num_gpus` processes otherwise (config written
    into the run directory first)."""
    run_dir = Path(run_dir)
    plain = [python or sys.executable, "-m", "tuneplan.training.runner", str(run_dir), "--worker"]
    if not is_distributed_setup(setup):
        return plain, {}
    cpu = cpu_only()
    run_setup = setup
    if cpu and setup.strategy == "fsdp":
        # accelerate never runs FSDP on CPU ranks: `AcceleratorState` switches to
        # DistributedType.FSDP only from a GPU-class distributed type (MULTI_GPU/XPU/NPU/...),
        # CPU ranks are MULTI_CPU (gloo) and the FSDP settings are ignored; with
        # `sync_module_states` the FSDP plugin even raises "no available devices". Say so and
        # run what really runs: DDP over gloo.
        from dataclasses import replace

        from tuneplan.events import MessageEvent, append_event

        run_setup = replace(setup, strategy="ddp")
        append_event(run_dir, MessageEvent(
            level="warning",
            text=f"FSDP needs GPUs: accelerate runs CPU ranks as MULTI_CPU (gloo) and ignores FSDP there, so this "
                 f"CPU run trains with DDP over {setup.num_gpus} processes (a full replica each)"))
    cfg = write_accelerate_config(run_dir, run_setup, main_process_port=free_port(), cpu=cpu)
    env: dict[str, str] = {}
    if cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    return launch_command(run_dir, cfg, python=python), env
