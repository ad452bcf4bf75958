"""Ray, for the commands that scale out (`synth --engine ray`, `audit --engine ray`).

`connect` joins the cluster named by ``RAY_ADDRESS``, or starts a local one with one CPU
per worker; `Actors` is the pool of one-CPU actors that synth and audit hand their work to.
Workers get the same ``PYTHONHASHSEED`` (the driver's, else 0): the audit compares Python
hashes computed on different workers, which is only meaningful when they share the seed.
They also import the same ``jaxlm`` as the driver (``PYTHONPATH``).

A cluster named by ``RAY_ADDRESS`` is waited for ``JAXLM_RAY_TIMEOUT`` seconds (default 60),
saying so on stderr; Ray itself retries an address that does not answer for minutes. `reach`
is that wait alone: the commands call it before they create their outputs.
"""

from __future__ import annotations

import os
import socket
import sys
import time

from jaxlm.errors import UserError, give_up_after

TIMEOUT_KEY = "JAXLM_RAY_TIMEOUT"


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
        timeout = reach()
        with give_up_after(timeout, f"RAY_ADDRESS={address}: the cluster did not accept this driver within "
                           f"{timeout:g} s; is it a Ray cluster of this version? (or raise {TIMEOUT_KEY})"):
            ray.init(address=address, **options)  # something answers there, but perhaps not Ray
    else:
        ray.init(num_cpus=workers, include_dashboard=False, **options)
    return ray, True


def reach() -> float:
    """Waits until the host:port of ``RAY_ADDRESS`` accepts a connection; returns the limit (seconds).
    Raises UserError (exit 2) naming the address if it does not within ``JAXLM_RAY_TIMEOUT``."""
    address = os.environ.get("RAY_ADDRESS", "")
    text = os.environ.get(TIMEOUT_KEY, "60")
    try:
        timeout = float(text)
    except ValueError:
        timeout = float("nan")
    if not timeout > 0:
        raise UserError(f"{TIMEOUT_KEY}={text!r}: expected a number of seconds > 0")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")  # an IPv6 address in brackets
    if not address or address == "auto" or not port.isdigit():  # Ray finds or names it: nothing to wait for here
        return timeout
    print(f"ray: waiting up to {timeout:g} s for the cluster at RAY_ADDRESS={address} ({TIMEOUT_KEY} sets the limit)",
          file=sys.stderr, flush=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                return timeout
        except OSError as e:
            if time.monotonic() >= deadline:
                raise UserError(f"RAY_ADDRESS={address}: no Ray cluster answered within {timeout:g} s "
                                f"({e.strerror or e}); start it, correct RAY_ADDRESS (unset: a local cluster), "
                                f"or raise {TIMEOUT_KEY}") from None
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


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
