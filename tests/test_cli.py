"""The `lab` console script: discovery of subcommands and --help."""
import subprocess
import sys

import pytest

from lab.cli import build_parser, main


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in build_parser()._subparsers._group_actions[0].choices:
        assert name in out


def test_the_module_runs_as_a_script():
    result = subprocess.run([sys.executable, "-m", "lab", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "lab" in result.stdout


def test_unknown_command_fails_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
