"""How a model runs, apart from what it computes: one frozen `Execution` per model, given at
construction (every family's model class takes `execution=`) and read by its forward pass, so
no setting hides in a submodule. `contract.configure` gives a loaded model another one.
"""

from __future__ import annotations

import dataclasses

from flax import nnx

from jaxlm.models import scan
from jaxlm.models.layers import ATTENTION


@dataclasses.dataclass(frozen=True)
class Execution:
    attention: str = "xla"  # "xla" | "cudnn" (see layers.attention; resolve "auto" with layers.resolve_attention)
    remat: str = "none"  # a scan.REMAT name: what a layer keeps for the backward pass
    scan_layers: bool = False  # decoder layers stacked for one lax.scan (a scan.Stack)
    # A mixture of experts: the mesh axis its experts are split over, their tokens sent to them all-to-all
    # over it (models/expert_parallel.py); "": the experts run where the tokens are (XLA moves the experts)
    expert_axis: str = ""

    def __post_init__(self):
        if self.attention not in ATTENTION[1:]:
            raise ValueError(f"attention={self.attention!r}: give 'xla' or 'cudnn' (resolve 'auto' first)")
        scan.remat_policy(self.remat)  # a bad name fails here, before any work


def decoder_layers(make_layer, count: int, execution: Execution):
    """`count` layers from `make_layer(i)`: an `nnx.List`, or a `scan.Stack` when the execution scans them."""
    built = nnx.List([make_layer(i) for i in range(count)])
    return scan.stack(built) if execution.scan_layers else built
