"""Training engine: `jaxlm train` / `python -m jaxlm.train [--config configs/NAME.yaml] [dotted.key=value ...]`.

config (the one config object) -> inputs (model, LoRA, pipelines) -> state (Optax, what trains)
-> engine (jaxlm.compute's jitted steps over its mesh) -> checkpointing (Orbax, resume)
-> metrics / report / export (logs, plots, samples, NER report; the exported model); run (prepare,
resume, checkpoint items, outputs) -> loop (steps, sync points, early stopping); cli is the command line.

Importing this package loads only the config: the loop (and with it the data stack and
TensorFlow) loads when `train`, `TrainResult` or `TrainingError` is first used.
"""

from jaxlm.lazy import lazy_attributes
from jaxlm.train.config import Config, ConfigError, load_config

_LAZY = {"train": "jaxlm.train.loop", "TrainResult": "jaxlm.train.loop", "TrainingError": "jaxlm.train.loop"}

__all__ = ["Config", "ConfigError", "load_config", "train", "TrainResult", "TrainingError"]  # pyright: ignore[reportUnsupportedDunderAll]  the last three: _LAZY

__getattr__ = lazy_attributes(__name__, _LAZY)
