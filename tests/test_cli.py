"""The `jaxlm` command: one row per subcommand, each with --help, and one exit-code convention."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

import pytest

from jaxlm import cli, errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_console_script_is_the_dispatcher():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert cli.load(scripts["jaxlm"]) is cli.main


def test_help_lists_every_command_with_its_line(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    for name, command in cli.COMMANDS.items():
        assert f"{name}  " in out and command.help in out
    assert "Exit codes" in out


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_each_command_has_its_own_help_under_its_jaxlm_name(name, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main([name, "--help"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: jaxlm {name} ")


@pytest.mark.parametrize("argv", [[], ["nonsense"]])
def test_a_missing_or_unknown_command_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    assert exit.value.code == errors.BAD_INPUT
    assert "train" in capsys.readouterr().err  # the valid commands are named


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_goes_through_the_exit_code_convention(name):
    assert cli.load(cli.COMMANDS[name].target).__wrapped__  # wrapped by errors.exit_codes


def test_the_subcommand_returns_its_status(tmp_path, capsys):
    assert cli.main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == errors.BAD_INPUT
    assert "no such model folder" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["jaxlm", "jaxlm.train", "jaxlm.convert"])
def test_python_dash_m_entry_points_still_work(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: ")


# --- the convention, implemented once in jaxlm.errors.exit_codes ---------------------------


def command(exception=None, status=None):
    @errors.exit_codes
    def main(argv=None):
        if exception is not None:
            raise exception
        return status

    return main


@pytest.mark.parametrize("exception, status, line", [
    (None, errors.DONE, ""),
    (errors.UserError("data.jsonl:3: no text"), errors.BAD_INPUT, "error: data.jsonl:3: no text"),
    (errors.ConfigError("train.steps must be >= 1, got 0"), errors.BAD_INPUT,
     "config error: train.steps must be >= 1, got 0"),
    (FileNotFoundError(2, "No such file or directory", "prompts.jsonl"), errors.BAD_INPUT,
     "error: prompts.jsonl: no such file or folder"),
    (errors.Stopped("step 7: the loss is not finite\nlower the learning rate"), errors.STOPPED,
     "stopped: step 7: the loss is not finite lower the learning rate"),
    (KeyboardInterrupt(), errors.INTERRUPTED, "interrupted: stopped by the user"),
])
def test_errors_become_one_line_and_a_status(exception, status, line, capsys):
    assert command(exception)() == status
    captured = capsys.readouterr()
    assert captured.err.strip() == line and captured.out == ""


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        command(ZeroDivisionError("bug"))()


def test_domain_errors_follow_the_convention():
    from jaxlm.audit.config import AuditError
    from jaxlm.data.config import MixingConfigError
    from jaxlm.data.records import DataError
    from jaxlm.hf.errors import CheckpointError
    from jaxlm.train.config import ConfigError

    for error in (AuditError, DataError, CheckpointError, ConfigError, MixingConfigError):
        assert issubclass(error, errors.UserError) and issubclass(error, ValueError)
