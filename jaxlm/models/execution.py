"""How a loaded model runs, apart from what it computes: its attention kernel, its remat policy,
and whether its decoder layers are stacked for one `lax.scan` (see `scan`).

Loading, LoRA and export work in Hugging Face's per-layer layout; `configure` stacks the layers
afterwards and `unrolled` gives the per-layer view back where HF names are needed.
"""

from __future__ import annotations

from flax import nnx

from jaxlm.models import scan
from jaxlm.models.layers import ATTENTION
from jaxlm.models.registry import architecture_of


def _layers_attribute(model) -> str | None:
    return architecture_of(model).family.layers


def is_stacked(model) -> bool:
    name = _layers_attribute(model)
    return name is not None and scan.is_stacked(getattr(model, name))


def configure(model, *, attention: str = "xla", remat: str = "none", scan_layers: bool = False):
    """Set `model` (in place) to run with this attention kernel ("xla" | "cudnn"; resolve "auto" with
    `layers.resolve_attention` first), remat policy (`scan.REMAT`) and stacked or unrolled layers."""
    if attention not in ATTENTION[1:]:
        raise ValueError(f"attention={attention!r}: give 'xla' or 'cudnn' (resolve 'auto' first)")
    scan.remat_policy(remat)  # a bad name fails here, before any work
    name = _layers_attribute(model)
    if name is None and (scan_layers or remat != "none"):
        raise ValueError(f"model.scan_layers / model.remat: {type(model).__name__} has no stack of decoder layers "
                         "to scan or rematerialise (supported: the causal LM families)")
    for _, module in nnx.iter_modules(model):
        if hasattr(module, "attention_kernel"):
            module.attention_kernel = attention  # pyright: ignore[reportAttributeAccessIssue]  the families' own
        if hasattr(module, "remat"):
            module.remat = remat  # pyright: ignore[reportAttributeAccessIssue]  the families' own
    if name is not None and scan_layers != is_stacked(model):
        layers = getattr(model, name)
        setattr(model, name, scan.stack(layers) if scan_layers else scan.unstack(layers))
    return model


def unrolled(model):
    """`model` itself if its layers are unrolled, else a copy with them unstacked (HF's per-layer layout)."""
    if not is_stacked(model):
        return model
    copy = nnx.clone(model)
    name = _layers_attribute(copy)
    assert name is not None  # a stacked model has its stack
    setattr(copy, name, scan.unstack(getattr(copy, name)))
    return copy
