"""Data pipeline: sources, TFDS builders, augmentation, packing, mixing, resume.

Importing this package imports neither TensorFlow nor TFDS: the configs and the
record readers are plain Python. The tf.data pipeline (``build_pipeline``,
``Pipeline``) imports TensorFlow (~5 s) and is loaded on first use; the
``jaxlm_*`` TFDS builders are registered where a ``tfds:`` source is read
(:func:`jaxlm.data.builders.dataset_builder`).
"""

from jaxlm.data.config import AugmentConfig, DataConfig, SourceConfig
from jaxlm.data.records import DataError, ReadStats, Record, read_records
from jaxlm.lazy import lazy_attributes

_LAZY = {
    "build_pipeline": "jaxlm.data.pipeline",
    "build_from_config": "jaxlm.data.pipeline",
    "Pipeline": "jaxlm.data.pipeline",
}

__all__ = [
    "AugmentConfig", "DataConfig", "SourceConfig",
    "DataError", "ReadStats", "Record", "read_records",
    *_LAZY,
]

__getattr__ = lazy_attributes(__name__, _LAZY)
