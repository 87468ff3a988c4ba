"""What a CUDA run of our training step allocates, emulated on fake CPU tensors.

`verification.memory_trace.trace_fake(..., semantics="cuda")` runs the real trainer on fake
tensors of the CPU device (a CPU-only torch build cannot run a single op on a fake CUDA
tensor: its device guard aborts the process) and switches every CPU-only code path that
changes what is allocated to the path a CUDA run takes. Each mechanism has a name (see
`MECHANISMS`) and can be switched off on its own; with all of them off the trace is the CPU
trace byte for byte (tests/verification/test_cuda_semantics.py), so the CUDA trace differs
from the CPU one by exactly these mechanisms:

- `sdpa`: `F.scaled_dot_product_attention` picks its kernel by PyTorch's CUDA rules
  (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp `select_sdp_backend`: flash, then
  memory-efficient, then math) and calls that kernel's own aten op, so autograd saves what the
  CUDA kernel saves (tools/autograd/derivatives.yaml) and the outputs have the CUDA kernel's
  shapes (torch/_meta_registrations.py); on the CPU, SDPA runs the CPU flash kernel.
- `sdpa_workspace`: the scratch the CUDA backward kernels allocate inside the op (not visible
  as outputs): flash `mha_bwd` (aten/src/ATen/native/transformers/cuda/flash_attn/flash_api.cpp)
  allocates `softmax_d` fp32 (b, h, round128(s)), `dq_accum` fp32 (b, round128(s), h,
  round32(d)) and, under grouped-query attention, `dk_expanded` / `dv_expanded` (b, s, h, d)
  before summing them into the kv-head gradients; the memory-efficient backward
  (mem_eff_attention/kernel_backward.h `workspace_size`) accumulates the query gradient in an
  fp32 workspace (`workspace_elements_gq`, 64 x 64 tiles here) and keeps fp32 `delta` (b, h, s).
- `autocast`: `torch.is_autocast_enabled()` without a device answers for CUDA (torch
  `torch/amp/autocast_mode.py`); under accelerate's autocast on a CUDA device it is True, so
  peft's 4-bit LoRA layers skip their input cast (peft/tuners/lora/bnb.py `requires_conversion
  = not torch.is_autocast_enabled()`). And `einsum`, in CUDA's lower-precision list but not
  the CPU's (torch/testing/_internal/autocast_test_lists.py `AutocastTestLists.torch_fp16` vs
  `AutocastCPUTestLists`), casts its inputs to the autocast dtype before it runs (peft's
  MoE `ParamWrapper.get_delta_weight`). The other list differences touch no tensor of our path
  that is not already fp32 (norms upcast by hand, softmax with an explicit dtype, the loss on
  `.float()` logits).
- `dropout`: `F.dropout` on CUDA is the fused `native_dropout`, which saves a bool mask
  (aten/src/ATen/native/Dropout.cpp `is_fused_kernel_acceptable` needs a CUDA tensor); the CPU
  multiplies by a noise tensor of the input dtype and saves that.
- `foreach`: torch AdamW and `clip_grad_norm_` default to the foreach kernels on CUDA
  (torch/optim/optimizer.py `_default_to_fused_or_foreach`; torch/utils/_foreach_utils.py),
  whose `_foreach_sqrt` makes a state-sized temporary; on the CPU AdamW runs per tensor.
- `bnb_gemm`: bitsandbytes' 4-bit matmul (`MatMul4Bit.forward` -> `bitsandbytes::gemm_4bit`)
  on CUDA (bitsandbytes/backends/cuda/ops.py) runs a fused kernel for up to
  `_gemm_4bit_custom_max_m` token rows when `_gemm_4bit_use_custom_cuda` (run here on the
  card's SM count and compute capability) says so, and otherwise dequantizes the whole weight
  (`_dequant_linear_fallback`: the fp32 absmax of a double-quantized weight twice, then the
  weight in the input dtype) before `F.linear`.
- `trl_triton`: trl's chunked LM head (trl/kernels/chunked_logprob.py) folds each tile with a
  Triton kernel in place and accumulates the fp32 gradient GEMMs with `addmm(out_dtype=fp32,
  out=acc)` on CUDA; on the CPU both are torch ops that make fp32 copies of every tile. The
  emulation keeps trl's buffers and skips the in-place writes. (On CUDA trl also scores only
  the labelled rows, a gathered copy of b x (s - 1) rows instead of the reshape of all b x s;
  fake tensors cannot index by a boolean mask, so that copy stays b x s rows here.)
- `cublas`: every thread that runs a cuBLAS GEMM gets its own handle and a workspace from the
  caching allocator, counted by `max_memory_allocated` (aten/src/ATen/cuda/CublasHandlePool.cpp
  `getCurrentCUDABlasHandle` -> `setWorkspaceForHandle`: `getChosenWorkspaceSize()`, 4096 x 2
  + 16 x 8 KiB, or 4096 x 8 KiB on sm90); a GEMM with a bias epilogue (`addmm`) also takes a
  cuBLASLt workspace (`getCUDABlasLtWorkspace`, 1 MiB, separate unless
  TORCH_CUBLASLT_UNIFIED_WORKSPACE=1). The forward runs on the Python thread, the backward on
  the autograd engine's CUDA device thread (torch/csrc/autograd/engine.cpp device threads):
  two handles, two workspaces.
- `offload` (`offload_activations` only): on CUDA trl builds its activation-offloading manager
  itself (`SFTConfig(activation_offloading=True)` -> trl/models/activation_offloading.py
  `get_act_offloading_ctx_manager(model)`: pinned host buffers, a second stream, up to 5 packed
  tensors kept on the card until their copy is done); on the CPU tuneplan builds the same
  manager single-stream (tuneplan/training/long_context.py). The emulation builds it with trl's
  CUDA options and runs trl's own pack/unpack code, with one change: the host buffers it
  allocates (`torch.empty`/`empty_like(..., device="cpu", pin_memory=...)`) are put on the
  meta device, which stands for host RAM. The tracker counts meta storages as host bytes
  (`LiveTensorTracker.host_device`), outside the device peak, and trl's `.to(device)` in the
  unpack hook then allocates the device copy the backward reads, as on a card. Each pinned host
  buffer (a `pin_memory=True` request, trl's CUDA default) counts what torch's pinned caching
  host allocator takes for it: the request rounded up to a power of two
  (aten/src/ATen/core/CachingHostAllocator.h `allocate`, `c10::llvm::PowerOf2Ceil`); every
  other host storage counts its own bytes (`CudaEmulation.host_nbytes`).
- `embed_host` (`offload_embedding` only): on a card `apply_host_embedding` (tuneplan/training/
  long_context.py `HostEmbedding`) keeps the frozen input embedding table in ordinary (pageable,
  unpinned) host RAM, copies each batch's token ids there, looks them up there and copies only
  the looked-up rows to the card; on the CPU the host is the device and those copies are no-ops.
  The emulation points `long_context.HOST_DEVICE` at the meta device, so the table, the ids'
  host copy and the looked-up rows are host storages (`LiveTensorTracker.host_device`), counted
  exactly (pageable memory: no rounding; only the pinned buffers of `offload` are rounded), and
  the `.to(input_ids.device)` of the rows allocates their device copy, as on a card. The device
  peak loses the table's bytes; `TraceResult.host_peak_bytes` holds the table plus, while the
  embedding runs, the ids (8 bytes a token) and the rows (tokens x hidden in the table dtype).
- `paged`: bitsandbytes' paged optimizers (`paged-adamw-8bit`, `paged-adamw-32bit`) keep the
  state of every tensor of at least 1e5 elements in CUDA managed memory (bitsandbytes/optim/
  optimizer.py `Optimizer8bit.get_state_buffer` -> `functional.get_paged`, cudaMallocManaged),
  outside the caching allocator, so outside `max_memory_allocated`; on the CPU they fall back
  to ordinary tensors. The emulation allocates them as on the CPU and moves them out of the
  peak (`LiveTensorTracker.to_unified`, `TraceResult.unified_peak_bytes`).
"""

from __future__ import annotations

import ast
import contextlib
import functools
from pathlib import Path

import torch

MECHANISMS = ("sdpa", "sdpa_workspace", "autocast", "dropout", "foreach", "bnb_gemm", "trl_triton", "cublas",
              "offload", "embed_host", "paged")

# (SM count, compute capability) of the card each architecture stands for: A100, H100/H200,
# L40S, B200, T4 (NVIDIA data sheets). Used by the CUDA rules that depend on the card.
ARCH_PROPS = {
    "turing": (40, 7, 5),
    "ampere": (108, 8, 0),
    "ada": (142, 8, 9),
    "hopper": (132, 9, 0),
    "blackwell": (148, 10, 0),
}

MiB = 1024**2


def cublas_workspace_bytes(arch: str | None) -> int:
    """CublasHandlePool.cpp `parseChosenWorkspaceSize`: ":4096:2:16:8", 32 MiB on sm90."""
    major, minor = ARCH_PROPS.get(arch or "", (0, 0, 0))[1:]
    return 4096 * 8 * 1024 if (major, minor) == (9, 0) else 4096 * 1024 * 2 + 16 * 1024 * 8


def cublaslt_workspace_bytes(arch: str | None) -> int:
    """CublasHandlePool.cpp `parseCUDABlasLtWorkspaceSize`: 1024 KiB, capped at the cuBLAS one."""
    return min(1024 * 1024, cublas_workspace_bytes(arch))


# -- SDPA routing (sdp_utils.cpp) ----------------------------------------------------------------
def sdpa_backend(q, k, v, attn_mask, dropout_p: float, is_causal: bool, enable_gqa: bool, arch: str) -> str:
    """`flash`, `efficient` or `math`: the backend PyTorch's CUDA dispatcher picks.

    aten/src/ATen/native/transformers/cuda/sdp_utils.cpp `can_use_flash_attention`: no mask,
    fp16/bf16, q/k/v head dims equal and <= 256, heads equal or (enable_gqa) divisible, sm80+,
    and on sm86/sm89 no head dim > 192 with gradients (`check_requires_grad_and_head_dim_gt192
    _constraints_on_sm86_89`). `can_use_mem_efficient_attention`: fp16/bf16/fp32, head dims a
    multiple of 8 (16-bit) or 4 (fp32), no grouped-query heads (`check_batch_size_and_num_heads
    _dense<false>`). Otherwise the math backend."""
    _, major, minor = ARCH_PROPS[arch]
    hq, hk = q.shape[-3], k.shape[-3]
    d, dv = q.shape[-1], v.shape[-1]
    heads_match = hq == hk == v.shape[-3]
    gqa_ok = enable_gqa and hk == v.shape[-3] and hq % hk == 0
    low = q.dtype in (torch.float16, torch.bfloat16)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    flash = (attn_mask is None and low and d == k.shape[-1] == dv and d <= 256 and major >= 8
             and (heads_match or gqa_ok)
             and not ((major, minor) in ((8, 6), (8, 9)) and d > 192 and grad)
             and not (is_causal and q.shape[-2] != k.shape[-2]))
    if flash:
        return "flash"
    align = 8 if low else 4
    eff = (q.dtype in (torch.float16, torch.bfloat16, torch.float32) and heads_match
           and d % align == 0 and dv % align == 0 and major >= 5)
    return "efficient" if eff else "math"


def _float_mask(attn_mask, dtype):
    # aten/src/ATen/native/transformers/attention.cpp `convert_boolean_attn_mask`
    if attn_mask is None or attn_mask.dtype != torch.bool:
        return attn_mask
    return torch.where(attn_mask.logical_not(), -float("inf"), torch.scalar_tensor(0.0, dtype=dtype))


def make_sdpa(arch: str, chosen: list | None = None):
    """A `scaled_dot_product_attention` that runs the kernel CUDA would run (see `sdpa_backend`)."""

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        backend = sdpa_backend(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa, arch)
        if chosen is not None:
            chosen.append(backend)
        if backend == "flash":
            return torch.ops.aten._scaled_dot_product_flash_attention(
                query, key, value, dropout_p, is_causal, False, scale=scale)[0]
        mask = _float_mask(attn_mask, query.dtype)
        if backend == "efficient":
            if mask is not None:
                # attention.cpp `preprocess_mask`: the bias broadcast to (b, h, s, s) as a view
                mask = mask.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
            grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
            return torch.ops.aten._scaled_dot_product_efficient_attention(
                query, key, value, mask, grad, dropout_p, is_causal, scale=scale)[0]
        return torch.ops.aten._scaled_dot_product_attention_math(
            query, key, value, mask, dropout_p, is_causal, None, scale=scale, enable_gqa=enable_gqa)[0]

    return sdpa


def _round(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def sdpa_backward_workspace(func, args) -> int:
    """Bytes the CUDA backward kernel of `func` allocates for itself (see the module doc)."""
    name = getattr(func, "__name__", "")
    if name.startswith("_scaled_dot_product_flash_attention_backward"):
        q, k = args[1], args[2]
        b, h, s, d = q.shape
        hk = k.shape[1]
        ws = 4 * b * h * _round(s, 128) + 4 * b * _round(s, 128) * h * _round(d, 32)
        if hk != h:
            ws += 2 * b * k.shape[2] * h * d * q.element_size()
        return ws
    if name.startswith("_scaled_dot_product_efficient_attention_backward"):
        q = args[1]
        b, h, s, d = q.shape
        ws = 4 * b * h * s  # delta
        if q.dtype != torch.float32:  # kNeedsAccumGradQ: the output is not the fp32 accumulator
            ws += 4 * b * h * _round(s, 64) * _round(d, 64)
        return ws
    return 0


# -- bitsandbytes' CUDA gemm_4bit dispatch ----------------------------------------------------
@functools.cache
def _bnb_cuda_dispatch():
    """(`_gemm_4bit_custom_max_m`, `_gemm_4bit_use_custom_cuda` undecorated) read from
    bitsandbytes/backends/cuda/ops.py. That module cannot be imported without CUDA (it binds
    CUDA stream functions at import), so its heuristic is compiled from the installed source
    with `_gpu_dispatch_props` supplied by the caller."""
    import bitsandbytes

    path = Path(bitsandbytes.__file__).parent / "backends" / "cuda" / "ops.py"
    tree = ast.parse(path.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_gemm_4bit_use_custom_cuda")
    fn.decorator_list = []
    floor = max_m = None
    for n in ast.walk(tree):
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
            if n.targets[0].id == "_GEMM_4BIT_CUSTOM_FLOOR_M":
                floor = ast.literal_eval(n.value)
            elif n.targets[0].id == "_gemm_4bit_custom_max_m" and max_m is None:
                max_m = ast.literal_eval(n.value)  # the CUDA branch comes first (ROCm: else)
    mod = ast.Module(body=[fn], type_ignores=[])
    return max_m, floor, compile(mod, str(path), "exec")


def bnb_dequantizes(M: int, N: int, K: int, blocksize: int, dtype, arch: str) -> bool:
    """Whether CUDA's `bitsandbytes::gemm_4bit` dequantizes the whole weight for M token rows."""
    max_m, floor, code = _bnb_cuda_dispatch()
    if M > max_m or K % blocksize != 0:
        return True
    props = ARCH_PROPS[arch]
    ns = {"torch": torch, "_GEMM_4BIT_CUSTOM_FLOOR_M": floor, "_gpu_dispatch_props": lambda _i: props}
    exec(code, ns)
    return not ns["_gemm_4bit_use_custom_cuda"](0, dtype, M, N, K)


def bnb_gemm_workspace(args, kwargs, arch: str) -> int:
    """Bytes `_dequant_linear_fallback` holds next to the output (0 with the fused kernel)."""
    A, _B, shapeB, _absmax, blocksize = args[:5]
    absmax_8bit = kwargs.get("absmax_8bit", args[7] if len(args) > 7 else None)
    K = A.shape[-1]
    M = A.numel() // K
    N = shapeB[0]
    if not bnb_dequantizes(M, N, K, blocksize, A.dtype, arch):
        return 0
    ws = N * K * A.element_size()  # B_dq
    if absmax_8bit is not None:
        ws += 2 * 4 * absmax_8bit.numel()  # absmax_dq and absmax_dq + offset, both fp32
    return ws


# -- the switches ----------------------------------------------------------------------------
_GEMMS = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "addmv", "mv", "dot", "_scaled_mm"}


HOST_DEVICE = "meta"
"""The device that stands for host RAM in the emulation (see `offload`, `embed_host`)."""


class _HostOnMeta:
    """trl's activation-offloading module sees this instead of `torch`: host (`device="cpu"`)
    buffers are allocated on `HOST_DEVICE` (the fake tensors cannot be pinned), and a request for
    pinned memory is allocated inside `emu.pinned()`, so the tracker counts it as the pinned host
    allocator does; everything else is torch itself."""

    def __init__(self, emu: CudaEmulation):
        self._emu = emu

    def __getattr__(self, name):
        return getattr(torch, name)

    def _alloc(self, fn, args, kwargs):
        if str(kwargs.get("device")) != "cpu":
            return fn(*args, **kwargs)
        pinned = bool(kwargs.get("pin_memory", False))
        kwargs = {**kwargs, "device": HOST_DEVICE, "pin_memory": False}
        with self._emu.pinned() if pinned else contextlib.nullcontext():
            return fn(*args, **kwargs)

    def empty(self, *args, **kwargs):
        return self._alloc(torch.empty, args, kwargs)

    def empty_like(self, *args, **kwargs):
        return self._alloc(torch.empty_like, args, kwargs)


class CudaEmulation:
    """The dispatch-level half of the emulation, called by `LiveTensorTracker` after each op:
    kernel workspaces (counted while the op runs) and the cuBLAS workspaces (kept)."""

    def __init__(self, arch: str, mechanisms):
        self.arch = arch
        self.on = frozenset(mechanisms)
        self.host_device = HOST_DEVICE if {"offload", "embed_host"} & self.on else None
        self._pinning = 0  # > 0 while a pinned host buffer is allocated (`_HostOnMeta`)
        self.handles: set[str] = set()
        self.lt_handles: set[str] = set()
        self.backends: list[str] = []
        self.tracker = None  # set by the trace: `paged` moves optimizer states out of its peak

    @staticmethod
    def pinned_nbytes(nbytes: int) -> int:
        """Pinned host bytes of a request (see `offload`): the next power of two."""
        return 0 if nbytes <= 0 else 1 << (int(nbytes) - 1).bit_length()

    @contextlib.contextmanager
    def pinned(self):
        """Host storages allocated inside are pinned (rounded by `host_nbytes`)."""
        self._pinning += 1
        try:
            yield
        finally:
            self._pinning -= 1

    def host_nbytes(self, nbytes: int) -> int:
        """Host bytes of a new host storage (the tracker's `host_size`): a pinned buffer's
        (`pinned_nbytes`) while one is allocated, else its own bytes (pageable memory: the host
        embedding's table, ids and rows)."""
        return self.pinned_nbytes(nbytes) if self._pinning else int(nbytes)

    def after(self, tracker, func, args, kwargs) -> None:
        name = func.__name__.split(".")[0]
        if "cublas" in self.on and name in _GEMMS:
            thread = "autograd" if tracker.phase == "backward" else "main"
            if thread not in self.handles:
                self.handles.add(thread)
                tracker.allocate_static(cublas_workspace_bytes(self.arch), "workspace")
            if name == "addmm" and args and getattr(args[0], "dim", lambda: 0)() == 1 and thread not in self.lt_handles:
                self.lt_handles.add(thread)
                tracker.allocate_static(cublaslt_workspace_bytes(self.arch), "workspace")
        ws = 0
        if "sdpa_workspace" in self.on:
            ws += sdpa_backward_workspace(func, args)
        if "bnb_gemm" in self.on and str(func).startswith("bitsandbytes.gemm_4bit"):
            ws += bnb_gemm_workspace(args, kwargs or {}, self.arch)
        if ws:
            tracker.transient(ws)


@contextlib.contextmanager
def cuda_semantics(arch: str = "hopper", mechanisms=MECHANISMS):
    """Patch the Python-level switches for the duration of a fake trace; yields the
    `CudaEmulation` to hand to the tracker."""
    if arch not in ARCH_PROPS:
        raise ValueError(f"arch must be one of {', '.join(ARCH_PROPS)} (got {arch!r})")
    unknown = set(mechanisms) - set(MECHANISMS)
    if unknown:
        raise ValueError(f"unknown CUDA mechanisms {sorted(unknown)}; known: {', '.join(MECHANISMS)}")
    emu = CudaEmulation(arch, mechanisms)
    on = emu.on
    undo: list = []

    missing = object()

    def patch(obj, name, value):
        undo.append((obj, name, getattr(obj, name, missing)))
        setattr(obj, name, value)

    lib = None
    try:
        if "sdpa" in on:
            patch(torch.nn.functional, "scaled_dot_product_attention", make_sdpa(arch, emu.backends))
        if "autocast" in on:
            orig_enabled = torch.is_autocast_enabled

            def is_autocast_enabled(device_type=None):
                # the trace's tensors are on the CPU: CUDA's autocast state is the CPU one
                if device_type is None or device_type == "cuda":
                    return orig_enabled("cpu")
                return orig_enabled(device_type)

            patch(torch, "is_autocast_enabled", is_autocast_enabled)
            lib = torch.library.Library("aten", "IMPL")
            keyset = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

            def einsum_autocast(equation, tensors, path=None):
                # autocast_mode.cpp KERNEL_CUDA(einsum, lower_precision_fp): cast, then run
                dtype = torch.get_autocast_dtype("cpu")
                cast = [t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t for t in tensors]
                with torch._C._ExcludeDispatchKeyGuard(keyset):
                    return torch.ops.aten.einsum.default(equation, cast, path=path)

            lib.impl("einsum", einsum_autocast, "AutocastCPU")
        if "dropout" in on:
            orig_dropout = torch.nn.functional.dropout

            def dropout(input, p=0.5, training=True, inplace=False):
                if training and 0 < p < 1 and not inplace and input.numel() > 0:
                    return torch.native_dropout(input, p, True)[0]
                return orig_dropout(input, p, training, inplace)

            patch(torch.nn.functional, "dropout", dropout)
        if "foreach" in on:
            import torch.nn.utils.clip_grad as clip
            import torch.optim.adam as adam

            def fused_or_foreach(params, differentiable, use_fused=False):
                return False, not differentiable

            patch(adam, "_default_to_fused_or_foreach", fused_or_foreach)
            patch(clip, "_has_foreach_support", lambda tensors, device: True)
        if "trl_triton" in on:
            try:
                import trl.kernels.chunked_logprob as clp
            except ImportError:
                clp = None
            if clp is not None:
                def in_place(*args, **kwargs):
                    return None  # the Triton fold / fp32-out GEMM write into trl's own buffers

                patch(clp, "_forward_tile", in_place)
                patch(clp, "_backward_tile", in_place)
                patch(clp, "_addmm_fp32", in_place)
        if "offload" in on:
            import trl.models.activation_offloading as act

            from tuneplan.training import long_context

            # trl's defaults, as `SFTTrainer` builds the manager on CUDA (sft_trainer.py)
            patch(long_context, "CPU_OFFLOAD_OPTIONS", {"use_pin_memory": True, "use_streams": True})
            patch(act, "torch", _HostOnMeta(emu))
            # trl tells storages apart by `data_ptr()` (deduplication, parameter storages); a
            # fake tensor's storage is a meta storage whose pointer is 0: give each its own
            orig_ptr = torch.UntypedStorage.data_ptr

            def data_ptr(storage):
                return id(storage) if storage.device.type == "meta" else orig_ptr(storage)

            patch(torch.UntypedStorage, "data_ptr", data_ptr)
            # trl synchronises its two streams on exit; CPU streams are already in order
            patch(torch.cpu.Stream, "synchronize", lambda stream: None)
            # trl's backward hook calls `record_stream(s0)` on a tensor it brought back when a view
            # of it outlives the node (the chunked RMSNorm of a recomputed layer saves the layer
            # input itself): on a card the block is then not reused before the compute stream
            # passes that point, and it is freed when its last reference goes, which is what the
            # trace counts; the binding refuses a CPU stream, so it is a no-op here
            patch(torch.Tensor, "record_stream", lambda tensor, stream: None)
        if "embed_host" in on:
            from tuneplan.training import long_context

            # the host embedding's table (and its lookups) in host RAM, not the card's memory
            patch(long_context, "HOST_DEVICE", HOST_DEVICE)
        if "paged" in on:
            import bitsandbytes.optim.optimizer as bnb_opt

            def get_state_buffer(opt, p, dtype=torch.float32):
                buf = torch.zeros_like(p, dtype=dtype, device=p.device)
                if opt.is_paged and p.numel() >= 1e5 and emu.tracker is not None:  # get_paged on CUDA
                    emu.tracker.to_unified(buf)
                return buf

            patch(bnb_opt.Optimizer8bit, "get_state_buffer", get_state_buffer)
        yield emu
    finally:
        if lib is not None:
            lib._destroy()
        for obj, name, value in reversed(undo):
            if value is missing:
                delattr(obj, name)
            else:
                setattr(obj, name, value)
