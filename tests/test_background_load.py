"""Start-up (issue 15): the terminal prompt shows while the model loads on a thread; the first
command waits for the load, a load error is one line, Ctrl-C and Ctrl-D while loading leave
cleanly; piped mode loads first."""

import signal
import threading
import time

import pexpect
import pytest
from test_repl import DRIVER, env_for

from chatrwkv import cli
from chatrwkv.backgroundload import BackgroundLoad
from chatrwkv.errors import ChatRWKVError


def test_result_waits_for_the_build_and_then_runs_in_the_waiting_thread():
    release = threading.Event()
    seen = []
    load = BackgroundLoad(lambda: release.wait(10) and "session",
                          then=lambda value: seen.append((value, threading.current_thread())))
    got = []
    waiter = threading.Thread(target=lambda: got.append(load.result()))
    waiter.start()
    time.sleep(0.3)
    assert not load.done() and not got and not seen  # still waiting on the build
    release.set()
    waiter.join(10)
    assert got == ["session"] and seen == [("session", waiter)] and not load.failed()
    assert load.result() == "session" and len(seen) == 1  # `then` ran once


def test_the_build_error_is_raised_where_the_result_is_taken():
    def build():
        raise ChatRWKVError("x.pth: damaged checkpoint")

    load = BackgroundLoad(build)
    with pytest.raises(ChatRWKVError, match="damaged checkpoint"):
        load.result()
    assert load.done() and load.failed()


def spawn_gated(tmp_path):
    gate = tmp_path / "gate"
    child = pexpect.spawn(DRIVER[0], [*DRIVER[1:], "--gate", str(gate)], env=env_for(tmp_path),
                          encoding="utf-8", timeout=20, dimensions=(40, 160))
    child.expect("loading the model")
    child.expect("User:")  # the prompt, while the load is still held at the gate
    return child, gate


def test_prompt_shows_before_the_load_and_the_first_message_waits(tmp_path):
    child, gate = spawn_gated(tmp_path)
    child.sendline("hello")
    child.expect_exact("(waiting for the model to load)")
    with pytest.raises(pexpect.TIMEOUT):
        child.expect_exact("Assistant:", timeout=0.5)  # no reply before the load ends
    gate.write_text("ok")
    child.expect_exact("Assistant: Yes!")
    child.expect("tokens")
    child.expect("User:")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_a_load_error_is_one_line_when_the_first_message_waits(tmp_path):
    child, gate = spawn_gated(tmp_path)
    gate.write_text("fail")
    child.sendline("hello")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    assert "chatrwkv: model.pth: damaged checkpoint (test)" in child.before
    assert "Traceback" not in child.before


def test_ctrl_c_while_waiting_for_the_load_leaves_cleanly(tmp_path):
    child, _ = spawn_gated(tmp_path)
    child.sendline("hello")
    child.expect_exact("(waiting for the model to load)")
    child.kill(signal.SIGINT)  # what Ctrl-C sends (not the key: no race with the tty's modes)
    child.expect(pexpect.EOF, timeout=60)
    child.close()
    assert child.exitstatus == 130 and "Traceback" not in child.before


def test_ctrl_d_while_loading_leaves_at_once(tmp_path):
    child, _ = spawn_gated(tmp_path)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and "Traceback" not in child.before


def test_the_demo_chat_in_a_terminal_shows_the_prompt_then_the_model(tmp_path):
    env = env_for(tmp_path)
    child = pexpect.spawn(DRIVER[0], ["-m", "chatrwkv", "--no-autosave", "--seed", "1",
                                      "--max-tokens", "5"], env=env, encoding="utf-8",
                          timeout=120, dimensions=(40, 160))
    child.expect("loading the model")
    child.expect("Romeo:")
    child.sendline("+gen The king")
    child.expect("RWKV v7")  # the model's line, once loaded
    child.expect("5 tokens")
    child.expect("Romeo:")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and "Traceback" not in child.before


def test_piped_mode_loads_before_reading_input(monkeypatch, capsys):
    """Piped output must not depend on timing: no background load there."""
    def refuse(*args):
        raise AssertionError("piped mode took the background load")

    monkeypatch.setattr(cli, "_chat_while_loading", refuse)
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("+gen The\n"))
    assert cli.main(["--no-autosave", "--seed", "1", "--max-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip()


def test_the_toolbar_says_loading_ready_or_failed():
    from chatrwkv.prompts import load_prompt
    from chatrwkv.ui import Terminal

    prompt = load_prompt("english-world")
    release = threading.Event()

    def build():
        release.wait(10)
        raise ChatRWKVError("x.pth: damaged checkpoint")

    for builder, end in ((lambda: release.wait(10) and "s", "model ready"),
                         (build, "the model did not load (Enter says why)")):
        release.clear()
        term = Terminal(None, loading=BackgroundLoad(builder), prompt=prompt)
        assert term.toolbar().startswith(" loading the model... | prompt english-world")
        release.set()
        while not term.loading.done():
            time.sleep(0.01)
        assert term.toolbar().startswith(f" {end} | prompt english-world")
