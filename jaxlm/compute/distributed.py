"""Several processes, one run: joining them, the one writer, and stopping them all when one fails.

`python -m jaxlm.train --distributed` runs the same command on every host (the workers of a
TPU slice, GPU machines, SLURM tasks). Everything that differs between the processes is
decided here:

* `initialize()` joins the processes (`jax.distributed.initialize`) before any device is used:
  from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID when they are set,
  otherwise as JAX detects the cluster (TPU VM metadata, SLURM, Open MPI, Kubernetes). It says
  on stderr what it waits for, and gives up after JAXLM_DISTRIBUTED_TIMEOUT seconds (default 300)
  with exit 2: JAX's own timeout aborts the process with a C++ stack trace instead.
* `is_writer()`: process 0 alone writes metrics, TensorBoard, plots, samples, the NER report
  and the exported model. Orbax checkpoints are written by every process (its own shards) to
  one path, which several hosts must share (a gs:// bucket or a shared file system).
* `stop_all(reason, code)`: a process that cannot go on puts the reason in the coordination
  service's key-value store; a watcher thread in every other process prints it and exits with
  the same code within about a second, instead of blocking in the next collective (measured in
  scripts/experiments/exp_multiprocess.py). A process that dies without a word (SIGKILL, out of memory) is
  noticed by JAX's heartbeat: the others are aborted after `heartbeat_timeout_seconds` (100 s).
* `allgather_json`, `common_count`, `host_copy`, `gather_rows`: what one process needs from all of them.

With one process every function here is a cheap no-op, so the loop calls them unconditionally.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
import threading
import time
import traceback

import jax
import numpy as np

from jaxlm.errors import UserError, give_up_after, outcome

ENV_KEYS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
TIMEOUT_KEY = "JAXLM_DISTRIBUTED_TIMEOUT"  # seconds to wait for every process to join (default 300, as JAX's)
_STOP_KEY = "jaxlm/stop"  # value: "<exit code> <reason>"
_LEFT_KEY = "jaxlm/left"  # how many processes have left after a stop
_client = None  # jax's distributed runtime client, once initialized
_stopping = threading.Event()  # this process is leaving (through stop_all, or at a normal exit)
_barriers = 0


class DistributedError(UserError):
    """The processes could not be joined; the message says what to set."""

    label = "distributed error"


def initialize() -> str:
    """Join the other processes; returns one line saying how they were found."""
    global _client
    values = {key: os.environ.get(key, "") for key in ENV_KEYS}
    given = [key for key, value in values.items() if value]
    if given and len(given) < len(ENV_KEYS):
        raise DistributedError(f"set all of {', '.join(ENV_KEYS)} or none of them "
                               f"(only {', '.join(given)} is set)")
    timeout = _int_env(TIMEOUT_KEY, os.environ.get(TIMEOUT_KEY, "300"))
    if timeout < 1:
        raise DistributedError(f"{TIMEOUT_KEY}={timeout}: must be >= 1 (seconds)")
    try:
        if given:
            count, index = (_int_env(key, values[key]) for key in ENV_KEYS[1:])
            waited = f"the {count} processes at the coordinator {values['JAX_COORDINATOR_ADDRESS']} " \
                     f"(this is process {index})"
            with _give_up_after(timeout, waited):
                jax.distributed.initialize(values["JAX_COORDINATOR_ADDRESS"], count, index,
                                           initialization_timeout=timeout + _JAX_GRACE)
            how = "from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID"
        else:
            with _give_up_after(timeout, "the processes the cluster environment names"):
                jax.distributed.initialize(initialization_timeout=timeout + _JAX_GRACE)
            how = "detected from the cluster environment"
    except DistributedError:
        raise
    except Exception as e:  # ValueError when nothing is detected, runtime errors when peers never come
        what = "no TPU VM, SLURM, Open MPI or Kubernetes environment detected" \
            if not given and isinstance(e, ValueError) else str(e).splitlines()[0]
        raise DistributedError(f"{what}; outside those, set {', '.join(ENV_KEYS)} "
                               f"on every process") from None
    from jax._src import distributed as jax_distributed  # the client has no public handle

    _client = jax_distributed.global_state.client
    watcher = threading.Thread(target=_watch, name="jaxlm-stop-watcher", daemon=True)
    watcher.start()
    # At a normal exit the watcher must be out of the runtime's C++ call before JAX shuts the client
    # down (registered after JAX's own shutdown hook, so it runs first); else the process aborts.
    atexit.register(lambda: (_stopping.set(), watcher.join(timeout=5)))
    return (f"distributed ({how}): process {jax.process_index()} of {jax.process_count()}, "
            f"{jax.local_device_count()} of {jax.device_count()} devices here")


_JAX_GRACE = 30  # JAX's own deadline comes this much later, so ours is the one that ends the wait


@contextlib.contextmanager
def _give_up_after(timeout: int, waited: str):
    """Says on stderr what the block waits for, and gives up after `timeout` seconds (exit 2)."""
    print(f"distributed: waiting up to {timeout} s for {waited} ({TIMEOUT_KEY} sets the limit)",
          file=sys.stderr, flush=True)
    with give_up_after(timeout, f"{waited}: not all joined within {timeout} s; start the same command on every "
                                f"process, check the address and port, or raise {TIMEOUT_KEY}"):
        yield


def _int_env(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{key}={value!r} is not an integer") from None


def is_writer() -> bool:
    """Process 0 writes what must be written once."""
    return jax.process_index() == 0


def stop_all(reason: str, code: int):
    """End every process with exit `code`, each printing `reason`; this one too (never returns).

    Call it instead of returning `code` when the processes may not all fail alike: the others
    would otherwise wait in their next collective (and this one in JAX's shutdown barrier).
    """
    if _client is None:
        raise SystemExit(code)
    _stopping.set()
    with contextlib.suppress(Exception):  # another process stopped first: its reason stands
        _client.key_value_set(_STOP_KEY, f"{code} process {jax.process_index()}: {reason}")
    _leave(code)


@contextlib.contextmanager
def stop_all_on_error():
    """Around a command's work: an error ends every process (see `stop_all`) with the command's exit
    status for it (jaxlm.errors); a bug, after its traceback, with status 1."""
    try:
        yield
    except BaseException as error:
        if isinstance(error, SystemExit) or _client is None:
            raise
        found = outcome(error)
        if found is None:
            traceback.print_exc()
            found = (f"{type(error).__name__}: {error}", 1)
        line, status = found
        print(line, file=sys.stderr, flush=True)
        stop_all(line, status)


def _watch() -> None:
    while not _stopping.is_set():
        try:
            value = _client.blocking_key_value_get(_STOP_KEY, 500)
        except Exception as e:  # a timeout means no stop yet; anything else: the runtime is shutting down
            if "DEADLINE_EXCEEDED" in str(e):
                continue
            return
        if _stopping.is_set():
            return
        code, _, reason = value.partition(" ")
        print(f"stopped: {reason}", file=sys.stderr, flush=True)
        _leave(int(code))


def _leave(code: int):
    """Exit now, skipping JAX's shutdown barrier that the others will never reach.

    Process 0 hosts the coordination service; when it leaves first the others are aborted
    (exit -6) instead of exiting with their code, so it waits for them, at most 10 s.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        left = _client.key_value_increment(_LEFT_KEY, 1)
        deadline = time.monotonic() + 10
        while jax.process_index() == 0 and left < jax.process_count() and time.monotonic() < deadline:
            time.sleep(0.05)
            left = int(_client.key_value_try_get(_LEFT_KEY))
    finally:
        os._exit(code)


def barrier(name: str, timeout_s: float = 3 * 3600) -> None:
    """Wait until every process gets here (e.g. the others while process 0 exports)."""
    global _barriers
    if _client is None:
        return
    _barriers += 1
    _client.wait_at_barrier(f"jaxlm/{name}/{_barriers}", int(timeout_s * 1000))


def allgather_json(value) -> list:
    """Every process's JSON-able `value`, in process order (e.g. each data pipeline's position)."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.array(len(data), np.int64))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:len(data)] = data
    rows = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[:n])) for row, n in zip(rows, lengths, strict=False)]


def common_count(count: int) -> int:
    """The largest `count` over the processes (e.g. eval batches, which each pads up to it)."""
    if jax.process_count() == 1:
        return count
    from jax.experimental import multihost_utils

    return int(multihost_utils.process_allgather(np.array(count, np.int64)).max())


def host_copy(tree):
    """Numpy copies of a pytree's arrays, whole on every process (multi-host arrays are gathered);
    RNG keys, which numpy cannot hold, stay as they are."""
    def copy(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return x
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(jax.device_get(x))

    return jax.tree.map(copy, tree)


def gather_rows(tree):
    """Every process's host arrays concatenated along the first axis, in process order (= batch order)."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
