"""Training engine: `jaxlm train` / `python -m jaxlm.train [--config configs/NAME.yaml] [dotted.key=value ...]`.

config (the one config object) -> inputs (model, LoRA, pipelines) -> state (Optax, what trains)
-> jaxlm.compute's step (jitted train/eval steps) over its sharding (mesh rules) -> checkpointing (Orbax, resume)
-> metrics / report (logs, plots, samples, NER report, export); run (prepare, resume, checkpoint
items, outputs) -> loop (steps, sync points, early stopping); cli is the command line.

Importing this package loads only the config: the loop (and with it the data stack and
TensorFlow) loads when `train`, `TrainResult` or `TrainingError` is first used.
"""

from jaxlm.lazy import lazy_attributes
from jaxlm.train.config import Config, ConfigError, load_config

_LAZY = {"train": "jaxlm.train.loop", "TrainResult": "jaxlm.train.loop", "TrainingError": "jaxlm.train.loop"}

__all__ = ["Config", "ConfigError", "load_config", *_LAZY]

__getattr__ = lazy_attributes(__name__, _LAZY)
