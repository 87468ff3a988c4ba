"""How the planner's memory model is checked; development only, not shipped in the wheel.

- `memory_trace`: the live tensor bytes of real CPU training steps of tuneplan's trainer, and
  of the same step on fake tensors for full-size models (`trace_fake`);
- `cuda_semantics`: what a CUDA card's step does differently, emulated on the fake tensors;
- `memory_calibration`: the planner against published GPU measurements
  (tests/data/calibration/cases.json), each in its own training stack's
  `planner.setup.CalibrationProfile`.

Used by the tests (tests/planner, tests/verification) and the benchmarks (bench/). pyproject's
`[tool.setuptools.packages.find]` does not include this package, and an import-linter
contract keeps `planner` and `tuneplan` from importing it.
"""
