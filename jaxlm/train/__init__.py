"""Training engine: `python -m jaxlm.train [--config configs/NAME.yaml] [dotted.key=value ...]`.

config (the one config object) -> inputs (model, LoRA, pipelines) -> state (Optax, what trains)
-> step (jitted train/eval steps) over sharding (mesh rules) -> checkpointing (Orbax, resume)
-> metrics / report (logs, plots, samples, NER report, export); loop ties them together.
"""

from jaxlm.train.config import Config, ConfigError, load_config
from jaxlm.train.loop import TrainingError, TrainResult, train

__all__ = ["Config", "ConfigError", "load_config", "train", "TrainResult", "TrainingError"]
