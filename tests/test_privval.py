"""The validator's double-sign guard (``consensus.privval``): height/round/step checks, the
separately fsynced sign-state file, and a replica that lost its store's last heights pausing its
signatures until it has synced past them."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import trio

from agent_world_node import config as cfg
from agent_world_node.consensus.privval import (
    DoubleSignCode,
    DoubleSignRefused,
    MemorySignState,
    PrivValidator,
    SignStateError,
    SignStateFile,
    SignStep,
)
from agent_world_runtime.crypto import SigningKey, verify

from .node_harness import running_node, single_validator_home

KEY = SigningKey(b"\x11" * 32)
D = b"domain"


def test_the_guard_refuses_regressions_and_conflicts_and_re_signs_identical_messages() -> None:
    pv = PrivValidator(KEY, MemorySignState())
    first = pv.sign(5, 0, SignStep.PREVOTE, D, b"prevote-A")
    assert verify(KEY.public_key, D, b"prevote-A", first)
    assert pv.sign(5, 0, SignStep.PREVOTE, D, b"prevote-A") == first  # a re-send: same signature
    with pytest.raises(DoubleSignRefused) as conflict:
        pv.sign(5, 0, SignStep.PREVOTE, D, b"prevote-B")
    assert conflict.value.code == DoubleSignCode.CONFLICT
    for h, r, step in ((5, 0, SignStep.PROPOSAL), (4, 9, SignStep.PRECOMMIT)):
        with pytest.raises(DoubleSignRefused) as lower:
            pv.sign(h, r, step, D, b"x")
        assert lower.value.code == DoubleSignCode.REGRESSION
    pv.sign(5, 0, SignStep.PRECOMMIT, D, b"precommit-A")
    pv.sign(5, 1, SignStep.PROPOSAL, D, b"proposal")
    pv.sign(6, 0, SignStep.PREVOTE, D, b"next")
    pv.pause_until(8)
    with pytest.raises(DoubleSignRefused) as paused:
        pv.sign(7, 0, SignStep.PREVOTE, D, b"y")
    assert paused.value.code == DoubleSignCode.PAUSED
    pv.sign(9, 0, SignStep.PROPOSAL, D, b"z")
    assert pv.last is not None and (pv.last.height, pv.last.step) == (9, SignStep.PROPOSAL)


def test_the_state_file_survives_restarts_and_interrupted_writes(tmp_path) -> None:
    path = tmp_path / "data" / "priv_validator_state.json"
    pv = PrivValidator(KEY, SignStateFile(path))
    sig = pv.sign(3, 1, SignStep.PRECOMMIT, D, b"m")
    again = PrivValidator(KEY, SignStateFile(path))  # a restart
    assert again.last is not None and again.last.signature == sig
    with pytest.raises(DoubleSignRefused):
        again.sign(3, 1, SignStep.PREVOTE, D, b"m")
    # a crash after writing the temp file and before the rename leaves the old state in force
    (path.parent / f".tmp-0-{path.name}").write_text(json.dumps({"height": 1}))
    assert PrivValidator(KEY, SignStateFile(path)).last == again.last
    # a corrupt file stops the start (forgetting what was signed is the one thing not to do)
    path.write_text("{not json")
    with pytest.raises(SignStateError, match="corrupt"):
        SignStateFile(path).load()


def test_no_signature_exists_when_the_state_cannot_be_written(tmp_path) -> None:
    class Full(SignStateFile):
        def save(self, state) -> None:  # type: ignore[no-untyped-def]
            raise OSError(28, "No space left on device")

    pv = PrivValidator(KEY, Full(tmp_path / "s.json"))
    with pytest.raises(OSError):
        pv.sign(1, 0, SignStep.PROPOSAL, D, b"m")
    assert pv.last is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_an_unwritable_directory_gives_no_signature(tmp_path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    pv = PrivValidator(KEY, SignStateFile(directory / "s.json"))
    with pytest.raises(OSError):
        pv.sign(1, 0, SignStep.PROPOSAL, D, b"m")
    assert pv.last is None


def test_a_validator_whose_store_was_rolled_back_signs_nothing_it_may_have_signed(tmp_path) -> None:
    """A lone validator runs to some height; its database is then replaced by an older copy (as a
    restored backup, or a lost ``-wal`` file, would do). Restarted, it must not sign again at the
    heights it already signed: it pauses (it is the only validator, so the chain waits for the
    operator rather than fork) and its sign state stays what it was."""
    home = single_validator_home(tmp_path / "solo", chain_id="privval", timeout_commit_ms=10)
    c = cfg.read_config(home.config_file)
    c.storage.snapshot_interval = 1000  # no world snapshot: the rollback is of the database only
    cfg.write_config(home.config_file, c)
    backup = tmp_path / "backup"

    async def main() -> None:
        with trio.fail_after(60):
            async with running_node(home) as node:
                while node.height < 5:
                    await trio.sleep(0.01)
            backup.mkdir()
            for f in home.data_dir.glob("node.sqlite3*"):
                shutil.copy2(f, backup / f.name)
            async with running_node(home) as node:
                while node.height < 25:
                    await trio.sleep(0.01)
            signed = home.sign_state_file.read_text()
            for f in home.data_dir.glob("node.sqlite3*"):
                f.unlink()
            for f in backup.iterdir():
                shutil.copy2(f, home.data_dir / f.name)
            async with running_node(home) as node:
                assert node.height < 25
                pv = node.replica.privval
                assert pv is not None and pv.paused_until >= 25
                await trio.sleep(1.5)
                assert node.replica.core.height_messages() == [] or all(
                    m.validator != node.replica.validator_id for m in node.replica.core.height_messages())
            assert home.sign_state_file.read_text() == signed  # nothing new was signed

    trio.run(main)
