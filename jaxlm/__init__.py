"""jaxlm: fine-tune Hugging Face language models with JAX/Flax NNX.

Importing the package loads nothing heavy: `load_pretrained`, `export_pretrained` and `generate` (and JAX with
them) load on first use, so that the `jaxlm` command reads its arguments, and reruns itself under another
allocator where it does (jaxlm/cpu_flags.py), before paying for JAX's import.
"""

from jaxlm.lazy import lazy_attributes

_LAZY = {"load_pretrained": "jaxlm.hf.load", "export_pretrained": "jaxlm.hf.export", "generate": "jaxlm.sampling"}

__all__ = ["load_pretrained", "export_pretrained", "generate"]  # pyright: ignore[reportUnsupportedDunderAll]  _LAZY

__getattr__ = lazy_attributes(__name__, _LAZY)
