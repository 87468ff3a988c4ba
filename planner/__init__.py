"""The pure estimation library behind tuneplan.

Standard library only: model specs and exact parameter counts, the GPU-memory model of
one training step, the GPU catalog, throughput/time/cost and the configuration solver.
Nothing here imports torch, transformers, textual or rich (a test enforces it).
"""
