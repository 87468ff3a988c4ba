"""tuneplan: plan, launch and follow LoRA/QLoRA fine-tuning runs on the GPU you have."""

__version__ = "0.1.0"
