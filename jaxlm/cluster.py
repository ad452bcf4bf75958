"""Ray, for the commands that scale out (`synth --engine ray`, `audit --engine ray`).

`connect` joins the cluster named by ``RAY_ADDRESS``, or starts a local one with one CPU
per worker; `Actors` is the pool of one-CPU actors that synth and audit hand their work to.
Workers get the same ``PYTHONHASHSEED`` (the driver's, else 0): the audit compares Python
hashes computed on different workers, which is only meaningful when they share the seed.
They also import the same ``jaxlm`` as the driver (``PYTHONPATH``).
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


class Actors:
    """`count` Ray actors of `actor_class(*args)`, one CPU each: `map(fn, values)` hands the values to
    whichever actor is free (`fn(actor, value)` returns the remote call) and yields the results in the
    order of `values`; `kill()` ends the actors (the cluster stays: `connect` says who shuts it down)."""

    def __init__(self, ray, actor_class, args: tuple, count: int):
        self.ray = ray
        worker = ray.remote(num_cpus=1)(actor_class)
        self.actors = [worker.remote(*args) for _ in range(count)]

    def map(self, fn, values):
        from ray.util import ActorPool

        return ActorPool(self.actors).map(fn, list(values))

    def kill(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
