"""Experiment: what JAX's multi-process runtime does on one CPU machine (not run by CI).

Backs `jaxlm/compute/distributed.py` (`stop_all`: the other processes exit within about a second)
and the README's "Past one host" on one machine.

    python scripts/experiments/exp_multiprocess.py

Starts two processes on localhost, each with 2 host-platform CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=2) and JAX's gloo CPU collectives
(the default `jax_cpu_collectives_implementation` in jax 0.10), and checks, printing
what it measured:

1. `jax.distributed.initialize(coordinator_address, num_processes, process_id)`:
   4 global devices, 2 addressable per process, a mesh over all 4;
2. `jax.make_array_from_process_local_data`: each process's rows become its slice of a
   global batch, in process order, and a jitted step on it gives the same numbers as one
   process with 4 devices given the concatenated batch;
3. Orbax: both processes save one checkpoint to one path (each writes its own shards, a
   JSON item is written by process 0 only) and restore it;
4. failure: process 1 raises; with a stop key in the coordination service's key-value
   store and a watcher thread, process 0 exits within seconds naming the reason. (Without
   it, process 0 blocks in its next collective and process 1 in the shutdown barrier: a
   hang of up to `shutdown_timeout_seconds`, 300 s by default. A process killed with
   SIGKILL is only noticed after `heartbeat_timeout_seconds`, 100 s by default, when JAX
   aborts the others with "another task died".) Process 0 hosts the coordination service:
   when it leaves first, the others are aborted (exit -6, as process 1 here) instead of
   exiting with their own code, so a real implementation lets process 0 leave last.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

STOP_KEY = "exp/stop"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(process_id: int, port: int, workdir: str, fail: bool) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import orbax.checkpoint as ocp
    from jax._src import distributed
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    began = time.perf_counter()
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    out = {"init_s": round(time.perf_counter() - began, 2), "devices": jax.device_count(),
           "local_devices": jax.local_device_count(), "process_index": jax.process_index()}
    client = distributed.global_state.client

    def watch():
        while True:
            try:
                reason = client.blocking_key_value_get(STOP_KEY, 1000)
            except Exception as e:  # a timeout: nothing yet
                if "DEADLINE" in str(e).upper() or "TIMED OUT" in str(e).upper():
                    continue
                return
            print(json.dumps({"process": process_id, "stopped_by": reason,
                              "after_s": round(time.perf_counter() - began, 2)}), flush=True)
            os._exit(3)

    mesh = jax.make_mesh((4,), ("data",))
    rows = np.arange(8, dtype=np.float32).reshape(4, 2)  # the global batch
    local = rows[2 * process_id: 2 * process_id + 2]
    batch = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)
    w = jax.device_put(jnp.ones((2,), jnp.float32), NamedSharding(mesh, P()))
    step = jax.jit(lambda w, x: (w - 0.1 * jnp.mean(x * w, axis=0), jnp.sum(x)))
    w, total = step(w, batch)
    out.update(global_shape=list(batch.shape), batch_sum=float(total), w=np.asarray(w).tolist())

    path = os.path.join(workdir, "ckpt")
    manager = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=True),
                                    item_names=("state", "loop"))
    state = {"w": w, "batch": batch}
    manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            loop=ocp.args.JsonSave({"written_by": process_id})), force=True)
    manager.wait_until_finished()
    like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
    restored = manager.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore(like),
                                                          loop=ocp.args.JsonRestore()))
    manager.close()
    out.update(restored_equal=bool(jnp.all(restored.state["batch"] == batch)),
               restored_loop=restored.loop, ckpt_files=sorted(os.listdir(os.path.join(path, "1", "state"))))
    print(json.dumps({"process": process_id, **out}), flush=True)

    if fail:
        if process_id == 1:
            reason = "process 1: data error: bad.jsonl:3: not JSON"
            client.key_value_set(STOP_KEY, reason)
            time.sleep(1.0)  # let the others read the key before this process goes
            os._exit(2)
        threading.Thread(target=watch, daemon=True).start()
        while True:  # process 0 keeps stepping; collectives with process 1 block once it is gone
            w, total = step(w, batch)
            float(total)


def reference() -> dict:
    """One process, 4 devices, the concatenated batch."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((4,), ("data",))
    rows = np.arange(8, dtype=np.float32).reshape(4, 2)
    batch = jax.device_put(rows, NamedSharding(mesh, P("data")))
    w = jnp.ones((2,), jnp.float32)
    w, total = jax.jit(lambda w, x: (w - 0.1 * jnp.mean(x * w, axis=0), jnp.sum(x)))(w, batch)
    return {"devices": jax.device_count(), "batch_sum": float(total), "w": np.asarray(w).tolist()}


def launch(args: list[str], devices: int) -> subprocess.Popen:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, __file__, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "fail")
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--reference":
        print(json.dumps(reference()))
        return
    ref = json.loads(launch(["--reference"], 4).communicate()[0])
    print("1 process x 4 devices:", ref)
    for mode in ("ok", "fail"):
        with tempfile.TemporaryDirectory() as workdir:
            port = free_port()
            began = time.perf_counter()
            procs = [launch(["--worker", str(i), str(port), workdir, mode], 2) for i in range(2)]
            try:
                outputs = [p.communicate(timeout=120)[0] for p in procs]
            except subprocess.TimeoutExpired:
                for p in procs:
                    p.kill()
                print(f"{mode}: timed out after 120 s")
                continue
            elapsed = time.perf_counter() - began
            print(f"--- 2 processes x 2 devices, mode={mode}: {elapsed:.1f}s wall, "
                  f"exit codes {[p.returncode for p in procs]}")
            for line in (s for s in "".join(outputs).splitlines() if s.startswith("{")):  # gloo prints too
                record = json.loads(line)
                print("   ", record)
                if "w" in record:
                    same = record["w"] == ref["w"] and record["batch_sum"] == ref["batch_sum"]
                    print(f"    process {record['process']}: step result equals 1x4 reference: {same}")


if __name__ == "__main__":
    main()
