"""Hugging Face interop: read HF folders and GGUF files into jaxlm models, write HF folders back."""

from jaxlm.hf.errors import CheckpointError

__all__ = ["CheckpointError"]
