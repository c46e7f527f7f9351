"""`awnode --version`, `awnode version` (with the consensus-relevant pinned libraries) and `-h`."""

from __future__ import annotations

import importlib.metadata

from typer.testing import CliRunner

from agent_world_tools import cli

runner = CliRunner()


def test_version_flag_and_command_name_the_pinned_libraries():
    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"awnode {importlib.metadata.version('agent-world')}"
    table = runner.invoke(cli.app, ["version"])
    assert table.exit_code == 0
    lines = dict(line.split(None, 1) for line in table.output.strip().splitlines())
    assert lines["libp2p"] == "0.8.1" and lines["wasmtime"] == "50.0.1"
    assert lines["msgspec"] == importlib.metadata.version("msgspec") and "python" in lines


def test_dash_h_is_help_everywhere():
    for args in (["-h"], ["staking", "-h"], ["gov", "vote", "-h"], ["testnet", "init", "-h"], ["submit", "-h"],
                 ["action", "-h"], ["status", "-h"]):
        result = runner.invoke(cli.app, args)
        assert result.exit_code == 0, (args, result.output)
        assert "Usage: awnode" in result.output, args
        assert "<bool>" not in result.output, args  # a flag is a flag, not a typed value


def test_enum_arguments_show_their_choices():
    result = runner.invoke(cli.app, ["gov", "vote", "-h"])
    assert result.exit_code == 0 and "yes|no|abstain" in result.output, result.output
