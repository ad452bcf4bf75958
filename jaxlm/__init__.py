"""jaxlm: fine-tune Hugging Face language models with JAX/Flax NNX."""

from jaxlm.hf.export import export_pretrained
from jaxlm.hf.load import load_pretrained
from jaxlm.sampling import generate

__all__ = ["load_pretrained", "export_pretrained", "generate"]
