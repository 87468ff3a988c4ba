"""The training process: the only package that imports torch, transformers, peft, trl and
bitsandbytes."""

import logging

# bitsandbytes' CPU backend tries an optional Hub kernel ("kernels-community") on CPUs with
# AVX512-BF16 and logs a warning when the `kernels` package is missing
# (bitsandbytes/backends/cpu/ops.py); it then uses its own CPU code, which is what our CPU
# runs use anyway. The notice is noise in every CPU run's output.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
