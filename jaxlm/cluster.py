"""Ray, for the commands that scale out (`synth --engine ray`, `audit --engine ray`).

`connect` joins the cluster named by ``RAY_ADDRESS``, or starts a local one with one CPU
per worker. Workers get the same ``PYTHONHASHSEED`` (the driver's, else 0): the audit
compares Python hashes computed on different workers, which is only meaningful when they
share the seed. They also import the same ``jaxlm`` as the driver (``PYTHONPATH``).
"""

from __future__ import annotations

import os


def worker_env() -> dict[str, str]:
    import jaxlm

    source_root = os.path.dirname(os.path.dirname(os.path.abspath(jaxlm.__file__)))
    path = os.pathsep.join(filter(None, [source_root, os.environ.get("PYTHONPATH")]))
    return {"PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0"), "PYTHONPATH": path,
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def connect(workers: int):
    """(the ray module, whether this call started the cluster and so should shut it down)."""
    try:
        import ray
    except ImportError:
        raise ImportError("--engine ray needs Ray: pip install 'jaxlm[ray]' (or pip install ray)") from None
    if ray.is_initialized():
        return ray, False
    options = {"runtime_env": {"env_vars": worker_env()}, "log_to_driver": False}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **options)
    else:
        ray.init(num_cpus=workers, include_dashboard=False, **options)
    return ray, True
