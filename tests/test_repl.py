"""The REPL end to end: the real UI in a pseudo-terminal (pexpect) and in piped mode, over the
fake model (tests/chat_driver.py); the command line itself; and a real tiny checkpoint when the
engine and tokenizer can load one."""

import os
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

ROOT = Path(__file__).resolve().parent.parent
DRIVER = [sys.executable, str(ROOT / "tests" / "chat_driver.py")]


def env_for(tmp_path):
    return dict(os.environ, CHATRWKV_HOME=str(tmp_path / "home"), TERM="xterm",
                PROMPT_TOOLKIT_NO_CPR="1", PYTHONPATH=str(ROOT), NO_COLOR="1")


def test_piped_mode_exact_transcript(tmp_path):
    lines = "hello\n+gen Once upon\n+\n+bogus\n+++\n+exit\nnever read\n"
    out = subprocess.run(DRIVER, check=False, input=lines, capture_output=True, text=True, timeout=60,
                         env=env_for(tmp_path))
    assert out.returncode == 0, out.stderr
    # chat reply; 12 tokens of free text; the same reply again; 12 more tokens of free text
    assert out.stdout == "Yes!\n" + " Yes!" + "\n" * 7 + "\n" + "Yes!\n" + "\n" * 12 + "\n"
    assert out.stderr.strip() == ("chatrwkv: unknown command +bogus (type +help for the list; "
                                  "start a message with \\+ to send a literal '+')")


def ends_cleanly(child) -> None:
    """The chat in `child` has been told to leave: it ends, with exit status 0."""
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def spawn(tmp_path, *args):
    child = pexpect.spawn(DRIVER[0], [*DRIVER[1:], *args], env=env_for(tmp_path),
                          encoding="utf-8", timeout=20, dimensions=(40, 160))
    child.expect("talking with Assistant")
    return child


def test_terminal_session(tmp_path):
    child = spawn(tmp_path)
    child.expect("User:")
    child.sendline("hello")
    child.expect_exact("Assistant: Yes!")
    child.expect("tokens")  # the stats line
    child.expect("User:")
    child.sendline("+")
    child.expect_exact("Assistant: Yes!")
    child.expect("User:")
    child.sendline("+gen Once upon")
    child.expect_exact(" Yes!")
    child.expect("User:")
    child.sendline("+help")
    child.expect_exact("+qa TEXT")
    child.expect("User:")
    child.sendcontrol("d")
    ends_cleanly(child)
    history = (tmp_path / "home" / "history").read_text()
    assert "+hello" in history and "++gen Once upon" in history


def test_ctrl_c_stops_a_long_reply_and_the_chat_goes_on(tmp_path):
    child = spawn(tmp_path, "--slow")
    child.expect("User:")
    child.sendline("talk")
    child.expect_exact("Assistant: abab")
    child.sendintr()
    child.expect("stopped")
    child.expect("User:")
    child.sendline("+gen x")  # another command works after the interruption
    child.expect_exact("abab")
    child.sendintr()
    child.expect("stopped")
    child.expect("User:")
    child.send("half a line")
    child.sendintr()  # Ctrl-C on the prompt clears the line and keeps going
    child.expect("User:")
    child.sendline("+exit")
    ends_cleanly(child)


def cli(*args, input_text=None, tmp_path=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if tmp_path is not None:
        env["CHATRWKV_HOME"] = str(tmp_path)
    return subprocess.run([sys.executable, "-m", "chatrwkv", *args], check=False,
                          input=input_text,
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


def test_no_model_and_no_demo_model_is_one_line(tmp_path, monkeypatch, capsys):
    from chatrwkv import cli as cli_module
    from chatrwkv import defaults

    monkeypatch.setattr(defaults, "DEMO_MODEL", tmp_path / "absent.pth")
    assert cli_module.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model" in err


def test_cli_help_and_one_line_errors(tmp_path):
    out = cli("--help")
    assert out.returncode == 0 and "--model" in out.stdout and "+gen" in out.stdout
    out = cli("--model", "x.pth", "--temp", "9")
    assert out.returncode == 2 and "temperature must be" in out.stderr
    out = cli("--model", str(tmp_path / "missing.pth"), tmp_path=tmp_path)
    assert out.returncode == 1 and out.stderr.startswith("chatrwkv: ")
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_chat_py_is_the_same_program():
    out = subprocess.run([sys.executable, str(ROOT / "chat.py"), "--help"], check=False,
                         capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("usage: chatrwkv")


@pytest.fixture(scope="module")
def tiny_world_model(tmp_path_factory):
    """A tiny random v7 World checkpoint, or a skip while the engine/tokenizer are missing."""
    from chatrwkv.errors import ChatRWKVError
    from chatrwkv.models import load_model
    from chatrwkv.synth import write_checkpoint
    try:
        from chatrwkv.tokenizer import load_tokenizer
        path = write_checkpoint(tmp_path_factory.mktemp("m") / "tiny.pth", "7.0", n_layer=2,
                                n_embd=64, vocab_size=65536, head_size=16, seed=0)
        load_tokenizer(load_model(path).config.vocab_size)
    except (ImportError, ChatRWKVError, NotImplementedError, TypeError) as e:
        pytest.skip(f"engine or tokenizer not available yet: {e}")
    return path


def test_real_checkpoint_piped(tiny_world_model, tmp_path):
    out = cli("--model", str(tiny_world_model), "--seed", "1", "--max-tokens", "8",
              input_text="+qa hi\n+gen Once upon\n+qq why?\n", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") >= 3
    assert "Traceback" not in out.stderr


# --- issue 15 items 10-12: what the terminal shows ---------------------------------------------

def test_model_text_cannot_drive_the_terminal(tmp_path):
    """The reply " ESC[31mR CR !" is shown with ESC as a visible '␛' and the CR dropped: no
    colour change, no return to the start of the line."""
    child = spawn(tmp_path, "--escapes")
    child.expect("User:")
    child.sendline("hello")
    child.expect_exact("Assistant: ␛[31mR!")
    child.expect("tokens")
    assert "\x1b[31m" not in child.before and "\r!" not in child.before
    child.expect("User:")
    child.sendline("+path")  # the stored transcript is printed through the same filter
    child.expect_exact("Assistant: ␛[31mR!")
    child.expect("User:")
    child.sendline("+exit")
    child.expect(pexpect.EOF)
    out = subprocess.run(DRIVER + ["--escapes"], check=False, input=b"hello\n",
                         capture_output=True, timeout=60, env=env_for(tmp_path))
    assert out.stdout == b"\x1b[31mR\r!\n"  # piped: the model's text as data, unchanged


def test_keys_typed_during_a_reply_wait_for_the_next_prompt(tmp_path):
    child = spawn(tmp_path, "--slow", "--short")
    child.expect("User:")
    child.sendline("talk")
    child.expect_exact("Assistant: abab")
    child.send("typed ahead")
    child.expect("tokens")  # the reply ended by itself
    assert "typed" not in child.before  # not echoed into the middle of the reply
    child.expect("User:")
    child.expect_exact("typed ahead")  # kept: it waits at the prompt, to edit or send
    child.sendintr()  # Ctrl-C clears it
    child.expect("User:")
    child.sendline("+exit")
    ends_cleanly(child)


def test_keys_typed_while_the_chat_starts_show_once_at_the_first_prompt(tmp_path):
    # The real command on the demo model: keys typed once chatrwkv runs but before its prompt
    # (torch's import, the model's load) are not echoed by the terminal where the cursor is;
    # the prompt shows them once ("hello thereRomeo: hello there" before), ready to send, and
    # the terminal's echo is back after the chat, also when it leaves before the model loaded.
    child = pexpect.spawn(sys.executable, ["-m", "chatrwkv", "--no-autosave"],
                          env=env_for(tmp_path), encoding="utf-8", timeout=60,
                          dimensions=(40, 160))
    child.expect("tiny demo model")
    child.send("hello there")
    child.expect("Romeo:")
    assert "hello" not in child.before
    child.expect_exact("hello there")
    child.sendintr()  # Ctrl-C clears the line
    child.expect("Romeo:")
    # +exit, not Ctrl-D: a Ctrl-D that reaches the terminal between two prompts (canonical
    # mode) is its end-of-file, never a key, and that expect can match a redraw of the old line
    child.sendline("+exit")
    ends_cleanly(child)


def test_the_terminal_echo_is_back_after_the_chat():
    # quiet_keys' restore, as the chat uses it around its start and on its os._exit path.
    import termios

    from chatrwkv.typeahead import quiet_keys

    leader, follower = os.openpty()
    try:
        with os.fdopen(os.dup(follower), "r") as tty:
            lflag = termios.tcgetattr(follower)[3]
            assert lflag & termios.ECHO
            with quiet_keys(tty) as give_back:
                assert not termios.tcgetattr(follower)[3] & termios.ECHO
                give_back()  # at once (before os._exit)
                assert termios.tcgetattr(follower)[3] == lflag
                attrs = termios.tcgetattr(follower)
                attrs[3] &= ~termios.ECHO  # off again: leaving the block gives it back too
                termios.tcsetattr(follower, termios.TCSANOW, attrs)
            assert termios.tcgetattr(follower)[3] == lflag
    finally:
        os.close(leader)
        os.close(follower)


def test_ctrl_d_in_a_block_cancels_the_block_not_the_chat(tmp_path):
    child = spawn(tmp_path)
    child.expect("User:")
    child.sendline('"""')
    child.expect_exact("...")
    child.sendline("line one")
    child.expect(r"line one\S*\r\r\n")  # accepted (not a redraw while typing)
    child.expect_exact("...")  # the next line's prompt
    child.sendcontrol("d")
    child.expect("block cancelled")
    child.expect("User:")
    child.sendline("+path")  # nothing was sent
    child.expect("no messages yet")
    child.expect("User:")
    child.sendline("hello")  # and the chat goes on
    child.expect_exact("Assistant: Yes!")
    child.expect("User:")
    child.sendline("+exit")
    ends_cleanly(child)


def test_version():
    from chatrwkv import __version__

    out = cli("--version")
    assert (out.returncode, out.stdout) == (0, f"chatrwkv {__version__}\n")


def test_autosave_hint_names_the_command_that_resumes(tmp_path, monkeypatch, capsys):
    from chatrwkv import cli as cli_module
    from chatrwkv import ui

    assert cli_module.resume_command(None) == "chatrwkv --resume"  # the demo model
    assert cli_module.resume_command("g1-0.4b") == "chatrwkv --model g1-0.4b --resume"
    assert cli_module.resume_command("my models/x.pth") == \
        "chatrwkv --model 'my models/x.pth' --resume"

    class Saved:
        tree = type("Tree", (), {"nodes": [0, 1]})()  # a chat with one turn: worth saving
        states_folder = tmp_path
        model = type("Model", (), {"identity": lambda self: {"fingerprint": "abc"}})()

        def save_named(self, name):
            return tmp_path / f"{name}.session"

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    ui.autosave(Saved())
    err = capsys.readouterr().err
    assert "`chatrwkv --resume` continues it" in err and "--model" not in err


def test_tab_completes_branch_and_session_names(tmp_path):
    child = spawn(tmp_path)
    child.expect("User:")
    child.sendline("+branch experiment")
    child.expect("on new branch")
    child.expect("User:")
    child.sendline("+save mystory")
    child.expect("saved 'mystory'")
    child.expect("User:")
    child.send("+switch ex\t")
    child.expect_exact("periment")  # completed on the line
    child.send("\r")
    child.expect("switched to")
    child.expect("User:")
    child.send("+load mys\t")
    child.expect_exact("tory")
    child.send("\r")
    child.expect("loaded 'mystory'")
    child.expect("User:")
    child.sendline("+exit")
    child.expect(pexpect.EOF)


def test_verbose_puts_the_stats_line_on_stderr_and_leaves_stdout_alone(tmp_path):
    args = ("--no-autosave", "--seed", "1", "--max-tokens", "5")
    plain = cli(*args, input_text="+gen The king\n", tmp_path=tmp_path)
    verbose = cli(*args, "--verbose", input_text="+gen The king\n", tmp_path=tmp_path)
    assert plain.returncode == verbose.returncode == 0, verbose.stderr
    assert verbose.stdout == plain.stdout and plain.stdout.strip()
    assert "5 tokens · first token" in verbose.stderr and "tok/s" not in plain.stderr
