"""Data construction: make SFT data with a model, filter it, deduplicate it (`python -m jaxlm.synth`).

    from jaxlm.synth import SynthConfig, run_synth
    summary = run_synth(SynthConfig(mode="self-instruct", out="synth/", num=200))

Modules: `config` (options, filter names), `self_instruct` / `grounded` / `back_translate`
(the modes: prompts, planning, one batch), `filters` and `gopher` (checks on one candidate),
`novelty` (checks against what was kept), `state` (output folder, resume), `engine`
(local or Ray), `runner` (the run), `cli`.
"""

from jaxlm.lazy import lazy_attributes
from jaxlm.synth.config import FilterConfig, SynthConfig, SynthError

# Loaded on first use: the runner pulls in the model, the sampler and the filters.
_LAZY = {"run_synth": "jaxlm.synth.runner"}

__all__ = ["SynthConfig", "FilterConfig", "SynthError", *_LAZY]

__getattr__ = lazy_attributes(__name__, _LAZY)
