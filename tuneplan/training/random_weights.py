"""A model with random weights from its `config.json`, loaded exactly as real weights are.

`tuneplan probe --random-weights` measures a configuration before its weights are fetched
(a 70B model is 140 GB to download). The memory of a training step does not depend on the
weights' values, only on their shapes, dtypes and where they live, so the model must come out
of the same loading path as a real one: `modeling._load_model` calls transformers'
`from_pretrained` with the same dtype, attention, device map and (QLoRA) `BitsAndBytesConfig`,
but with a `state_dict` of lazy random tensors instead of checkpoint files
(`transformers.modeling_utils.PreTrainedModel.from_pretrained(None, state_dict=...)`).

transformers materializes each checkpoint entry with `tensor[...]` and then moves and
converts it (`transformers/core_model_loading.py` `_materialize_copy`; for safetensors the
entry is a lazy `get_slice` opened on the target device). `RandomTensor` answers `[...]`
with a fresh tensor made directly on the target device in the checkpoint dtype, so a 4-bit
model is quantized tensor by tensor on load (bitsandbytes' `Params4bit(...).to(device)` in
`transformers/integrations/bitsandbytes.py` `Bnb4bitQuantize`) and the whole 16-bit model is
never held anywhere: the GPU sees what a real load puts there, and nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

import torch

from planner.setup import TrainSetup
from tuneplan.training import modeling


class RandomTensor:
    """One checkpoint entry that becomes random values when transformers reads it (`[...]`)."""

    def __init__(self, shape: torch.Size, dtype: torch.dtype, device: torch.device, kind: str, std: float):
        self.shape, self.dtype, self.device, self.kind, self.std = shape, dtype, device, kind, std

    def get_shape(self) -> list[int]:  # the safetensors slice interface
        return list(self.shape)

    def __getitem__(self, index) -> torch.Tensor:
        t = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        if self.kind == "ones":
            t.fill_(1)
        elif self.kind == "normal":
            t.normal_(0.0, self.std)
        else:
            t.zero_()
        return t if index is Ellipsis else t[index]


def random_state_dict(config, dtype: torch.dtype, device: torch.device) -> dict[str, RandomTensor]:
    """What a checkpoint of `config` in `dtype` would hold, as lazy random tensors on `device`.

    Keys and shapes come from the model built on the meta device (no memory); weights tied to
    another (`lm_head` tied to the embeddings) are left out as `save_pretrained` leaves them
    out. Norm weights are ones, other floating-point tensors N(0, initializer_range)."""
    cls = modeling._model_class(config)
    if cls is None:
        from tuneplan.errors import UserError

        raise UserError(f"random weights need a model class transformers knows (model_type {config.model_type!r})")
    with torch.device("meta"):
        meta = cls._from_config(config, dtype=dtype)
    std = float(getattr(config, "initializer_range", None) or 0.02)
    seen: set[int] = set()
    out: dict[str, RandomTensor] = {}
    for name, t in meta.state_dict(keep_vars=True).items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        if not t.is_floating_point():
            kind = "zeros"
        elif t.dim() == 1 and "norm" in (name.split(".")[-2:-1] or [""])[0].lower():
            kind = "ones"
        else:
            kind = "normal"
        out[name] = RandomTensor(t.shape, t.dtype, device, kind, std)
    del meta
    return out


def load_random_for_training(config: dict | Any, setup: TrainSetup, *, device: str | torch.device | None = None,
                             seed: int = 0) -> tuple[Any, list[str]]:
    """Steps 1-3 of the training path (`modeling`) on random weights: `(model, notes)`.

    `config`: a `config.json` dict or transformers config. `device`: None = the GPU, else the CPU."""
    cfg = modeling.config_from_dict(config)
    dev = modeling._default_device(device)
    notes: list[str] = []
    torch.manual_seed(seed)
    state = random_state_dict(cfg, modeling.torch_dtype(setup.compute_dtype), dev)
    model = modeling._load_model(None, cfg, setup, dev, False, notes, state_dict=state)
    model = modeling.prepare_for_training(model, setup, notes)
    notes.insert(0, "random weights built from config.json (nothing downloaded); memory and speed are those "
                    "of the real weights")
    return model, notes
