"""Hostile files and terminals, in process: bounded reads of regular files only, the private
history file (0600, a full disk is one note), stale temp files of killed saves, checkpoints with
a flipped byte anywhere in their structure (issue 15 items 7, 17-19)."""

import os
import stat
import sys
import time
from pathlib import Path

import pexpect
import pytest
import torch

from chatrwkv import sessionfile
from chatrwkv.checkpoint import Checkpoint
from chatrwkv.errors import ChatRWKVError, CheckpointError
from chatrwkv.history import PrivateHistory
from chatrwkv.models import load_model
from chatrwkv.safeio import FileRefused, check_write_target, read_regular
from chatrwkv.synth import make_weights

ROOT = Path(__file__).resolve().parent.parent
DRIVER = [sys.executable, str(ROOT / "tests" / "chat_driver.py")]


def test_special_files_are_refused_without_reading_them(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    for path in ("/dev/zero", tmp_path / "fifo", tmp_path):
        with pytest.raises(FileRefused):
            read_regular(path, 1000)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 1001)
    with pytest.raises(FileRefused, match="too large"):
        read_regular(big, 1000)
    assert read_regular(big, 1001) == b"x" * 1001
    os.symlink(big, tmp_path / "link")
    with pytest.raises(FileRefused, match="symbolic link"):
        check_write_target(tmp_path / "link")
    check_write_target(big)
    check_write_target(tmp_path / "new")


def test_history_is_private_and_a_write_error_is_one_note(tmp_path):
    path = tmp_path / "history"
    h = PrivateHistory(str(path))
    h.store_string("caf\udce9\nline two")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(PrivateHistory(str(path)).load_history_strings()) == ["caf\ufffd\nline two"]
    path.chmod(0o644)  # a history from before
    h.store_string("again")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    full = PrivateHistory("/dev/full")
    full.store_string("one")
    full.store_string("two")
    assert full.take_notes() == ["history not kept: No space left on device"]
    assert full.take_notes() == []
    os.mkfifo(tmp_path / "fifo")
    fifo = PrivateHistory(str(tmp_path / "fifo"))
    assert list(fifo.load_history_strings()) == []  # no hang on a FIFO


def test_stale_temp_files_of_killed_saves_are_removed(tmp_path):
    stale = tmp_path / ".x.session.abc123.tmp"
    fresh = tmp_path / ".y.session.def456.tmp"
    other = tmp_path / ".notes.tmp"
    for p in (stale, fresh, other):
        p.write_bytes(b"half a save")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    assert sessionfile.remove_stale_temps(tmp_path) == 1
    assert not stale.exists() and fresh.exists() and other.exists()


def test_a_flipped_byte_anywhere_in_the_structure_is_one_error(tmp_path):
    w = make_weights("7.0", n_layer=1, n_embd=32, vocab_size=300, head_size=16)
    good = tmp_path / "good.pth"
    torch.save(w, good)
    data = good.read_bytes()
    # the pickle and the record headers come first, the zip's central directory last
    positions = [*range(30, 1500, 23), *range(len(data) - 3000, len(data), 37)]
    outcomes = set()
    for at in positions:
        bad = bytearray(data)
        bad[at] ^= 0xFF
        path = tmp_path / "flip.pth"
        path.write_bytes(bytes(bad))
        try:
            load_model(path, device="cpu", dtype="fp32")
            outcomes.add("loaded")
        except ChatRWKVError as e:
            assert "\n" not in str(e)
            outcomes.add(type(e).__name__)
    assert "CheckpointError" in outcomes


def test_weights_that_are_no_weights_are_refused(tmp_path):
    w = make_weights("7.0", n_layer=1, n_embd=32, vocab_size=300, head_size=16)
    for key, value, words in [("emb.weight", torch.zeros(0, 32), "empty"),
                              ("head.weight", w["head.weight"].to(torch.int64), "int64"),
                              ("head.weight", w["head.weight"].bool(), "bool")]:
        torch.save({**w, key: value}, tmp_path / "x.pth")
        with pytest.raises(CheckpointError, match=words):
            Checkpoint.open(tmp_path / "x.pth")
    inf = w["blocks.0.ffn.value.weight"].clone()
    inf[0, 0] = float("inf")
    torch.save({**w, "blocks.0.ffn.value.weight": inf}, tmp_path / "inf.pth")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_model(tmp_path / "inf.pth", device="cpu", dtype="fp32")


def test_terminal_non_utf8_byte_is_replaced_and_a_full_disk_keeps_the_chat(tmp_path):
    """In a pseudo-terminal: byte e9 typed into a message, then +save and the exit autosave
    work; the history file is /dev/full, so each history write fails: one note, chat goes on."""
    home = tmp_path / "home"
    home.mkdir()
    os.symlink("/dev/full", home / "history")
    env = dict(os.environ, CHATRWKV_HOME=str(home), TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1",
               PYTHONPATH=str(ROOT), NO_COLOR="1")
    child = pexpect.spawn(DRIVER[0], DRIVER[1:], env=env, timeout=30, dimensions=(40, 160))
    child.expect("User:")
    child.send(b"caf\xe9\r")
    child.expect_exact("history not kept:")  # /dev/full: not a regular file, not read
    child.expect_exact("Assistant: Yes!")
    child.expect("User:")
    child.sendline("+save mine")
    child.expect("saved 'mine'")
    child.expect("User:")
    child.sendline("+path")
    child.expect("User: caf\ufffd".encode())
    child.expect("User:")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert (home / "states" / "mine.session").exists()
    assert list((home / "states" / "last").glob("*.session"))


def test_closing_the_terminal_at_the_prompt_saves_without_a_traceback(tmp_path):
    home = tmp_path / "home"
    env = dict(os.environ, CHATRWKV_HOME=str(home), TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1",
               PYTHONPATH=str(ROOT), NO_COLOR="1")
    log = tmp_path / "stderr.txt"
    # stderr to a file: the terminal that closes cannot show what happens after
    script = (f"import runpy, sys; sys.stderr = open({str(log)!r}, 'w', buffering=1); "
              f"sys.argv = {DRIVER[1:]!r}; runpy.run_path({DRIVER[1]!r}, run_name='__main__')")
    child = pexpect.spawn(sys.executable, ["-c", script], env=env, timeout=30,
                          dimensions=(40, 160))
    child.expect("User:")
    child.sendline("hello")
    child.expect_exact("Assistant: Yes!")
    child.expect("User:")
    os.close(child.child_fd)  # the window closes: the kernel sends SIGHUP, the terminal is gone
    child.closed = True
    deadline = time.time() + 30
    while time.time() < deadline and os.waitpid(child.pid, os.WNOHANG) == (0, 0):
        time.sleep(0.2)
    assert list((home / "states" / "last").glob("*.session"))
    assert "Traceback" not in log.read_text(), log.read_text()
