"""The real CLI (subprocess, piped mode) on damaged and hostile input: each case gets one line on
stderr, no traceback, and the conversation survives (issue 15 items 7-9, 15-19).

The checkpoints are tiny random v7 models in the official layout (chatrwkv/synth); nothing is
downloaded."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from chatrwkv.synth import make_weights

ROOT = Path(__file__).resolve().parent.parent
DIMS = {"n_layer": 2, "n_embd": 64, "vocab_size": 65536, "head_size": 16}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    w = make_weights("7.0", **DIMS)
    torch.save(w, d / "m.pth")
    torch.save(make_weights("7.0", seed=1, **DIMS), d / "other.pth")
    torch.save({**w, "emb.weight": w["emb.weight"][:0]}, d / "zero_rows.pth")
    torch.save({**w, "head.weight": w["head.weight"].to(torch.int64)}, d / "int64.pth")
    torch.save({**w, "blocks.0.ffn.key.weight": torch.complex(
        w["blocks.0.ffn.key.weight"].float(), w["blocks.0.ffn.key.weight"].float())},
        d / "complex.pth")
    nan = w["blocks.1.att.receptance.weight"].clone()
    nan[3, 5] = float("nan")
    torch.save({**w, "blocks.1.att.receptance.weight": nan}, d / "nan.pth")
    H, N = DIMS["n_embd"] // DIMS["head_size"], DIMS["head_size"]
    state = {f"blocks.{i}.att.time_state": torch.zeros(H, N, N) for i in range(2)}
    state["blocks.1.att.time_state"][0, 0, 0] = float("inf")
    torch.save(state, d / "inf.state.pth")
    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "bigint.json").write_text('[{"role": "user", "content": "x", "n": ' + "9" * 5000 + "}]")
    (d / "nested.toml").write_text("x = " + "[" * 10_000 + "]" * 10_000 + "\n")
    (d / "emptysys.json").write_text(json.dumps([
        {"role": "system", "content": ""}, {"role": "user", "content": "imported hi"},
        {"role": "assistant", "content": "imported reply"}]))
    os.mkfifo(d / "fifo")
    (d / "target.md").write_text("keep me\n")
    os.symlink(d / "target.md", d / "link.md")
    return d


def env(home: Path) -> dict:
    return dict(os.environ, CHATRWKV_HOME=str(home), PYTHONPATH=str(ROOT), NO_COLOR="1",
                PYTHONWARNINGS="ignore")


def cli(args, home, stdin: str | bytes = "", model=None, timeout=120):
    cmd = [sys.executable, "-m", "chatrwkv", *(["--model", str(model)] if model else []),
           "--seed", "1", "--max-tokens", "3", *map(str, args)]
    data = stdin.encode() if isinstance(stdin, str) else stdin
    out = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout, env=env(home),
                         check=False)
    return out.returncode, out.stdout.decode("utf-8"), out.stderr.decode("utf-8")


def one_line(stderr: str, *words: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for w in words:
        assert w in lines[0], stderr
    return lines[0]


# --- refused at start: one line, exit 1 --------------------------------------------------------

@pytest.mark.parametrize("name, args, words", [
    ("zero_rows.pth", [], ["emb.weight", "empty"]),
    ("int64.pth", [], ["head.weight", "int64"]),
    ("complex.pth", [], ["complex"]),
    ("nan.pth", [], ["NaN"]),
    ("fifo", [], ["not a regular file"]),
    ("m.pth", ["--tokenizer", "/dev/zero"], ["not a regular file"]),
    ("m.pth", ["--tokenizer", "{d}/fifo"], ["not a regular file"]),
    ("m.pth", ["--prompt", "{d}/nested.toml"], ["nested too deeply"]),
    ("m.pth", ["--state", "{d}/inf.state.pth"], ["NaN, infinite"]),
    ("m.pth", ["--state", "{d}/fifo"], ["not a regular file"]),
    ("~nouser_i15r/x.pth", [], ["cannot expand"]),
])
def test_refused_at_start_with_one_line(files, tmp_path, name, args, words):
    model = name if name.startswith("~") else files / name
    code, _, err = cli([a.format(d=files) for a in args], tmp_path, model=model, timeout=60)
    assert code == 1
    one_line(err, *words)


@pytest.mark.parametrize("args", [["--seed", "9" * 23], ["--frequency", "inf"],
                                  ["--presence", "1e308"], ["--decay", "nan"],
                                  ["--top-k", "9" * 5000]])
def test_bad_option_values_are_argparse_errors(files, tmp_path, args):
    code, _, err = cli(args, tmp_path, model=files / "m.pth")
    assert code == 2 and "Traceback" not in err
    assert f"argument {args[0]}" in err.strip().splitlines()[-1]


def test_flipped_bytes_in_a_checkpoint(files, tmp_path):
    """A .pth with one flipped byte: loaded (the byte was in weight data) or refused in one line
    (the zip directory or the pickle: KeyError, IndexError, TypeError, ... before the fix)."""
    data = (files / "m.pth").read_bytes()
    # the pickle and the zip's directory are at the start and the end of the file
    for i, at in enumerate([60, 150, len(data) - 30, len(data) - 200]):
        bad = bytearray(data)
        bad[at] ^= 0xFF
        path = tmp_path / f"flip{i}.pth"
        path.write_bytes(bytes(bad))
        code, _, err = cli([], tmp_path / "home", model=path, timeout=60)
        assert code in (0, 1) and "Traceback" not in err, (at, err)
        if code == 1:
            one_line(err, str(path))


def test_subcommands_on_bad_input(files, tmp_path):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    model = home / "models" / "m.pth"
    model.write_bytes((files / "m.pth").read_bytes())
    meta = {"format": "chatrwkv-model", "size": model.stat().st_size, "params": "many",
            "vocab_size": [1], "n_layer": 2, "n_embd": 64, "disk_dtype": 5, "version": 7}
    (home / "models" / "m.pth.json").write_text(json.dumps(meta))
    out = subprocess.run([sys.executable, "-m", "chatrwkv", "list"], capture_output=True,
                         text=True, timeout=60, env=env(home), check=False)
    assert out.returncode == 0 and "Traceback" not in out.stderr and "8.5M" in out.stdout
    out = subprocess.run([sys.executable, "-m", "chatrwkv", "pull", "a b/c d/e.pth"],
                         capture_output=True, text=True, timeout=60, env=env(home), check=False)
    assert out.returncode != 0
    one_line(out.stderr, "a b/c d/e.pth")


# --- in the chat: each bad command is one line, and the conversation goes on --------------------

def test_bad_commands_in_a_chat_keep_the_conversation(files, tmp_path):
    home = tmp_path / "home"
    (home / "states").mkdir(parents=True)
    damaged = home / "states" / "damaged.session"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b"\x00" * 30)
    bad = [f"+import {files}/deep.json", f"+import {files}/bigint.json", "+import /dev/zero",
           f"+import {files}/fifo", "+import ~nouser_i15r/x.json",
           f"+state {files}/inf.state.pth", f"+state {files}/nan.pth",
           f"+prompt {files}/nested.toml", f"+export md {files}/link.md", "+load damaged"]
    lines = ["hello there", *bad, "-temp=0.01 cold", "caf\udce9 au lait", "+save mine",
             f"+export json {tmp_path}/out.json", "+path"]
    stdin = "\n".join(lines).encode("utf-8", "surrogateescape") + b"\n"
    code, out, err = cli([], home, stdin, timeout=300)  # the demo model: replies that end
    assert code == 0 and "Traceback" not in err, err
    problems = [line for line in err.splitlines() if line.startswith("chatrwkv:")]
    assert len(problems) == len(bad), err
    assert (files / "target.md").read_text() == "keep me\n" and (files / "link.md").is_symlink()
    # the path holds every turn, the non-UTF-8 byte as U+FFFD
    assert "Romeo: hello there" in out and "Romeo: cold" in out
    assert "Romeo: caf\ufffd au lait" in out
    exported = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert [m["content"] for m in exported if m["role"] == "user"] == [
        "hello there", "cold", "caf\ufffd au lait"]
    assert (home / "states" / "mine.session").exists()
    # the exit autosave wrote this model's `last`; --resume continues it
    code, out, err = cli(["--resume"], home, "+path\n")
    assert code == 0 and "Romeo: caf\ufffd au lait" in out, err


def test_import_with_an_empty_system_message(files, tmp_path):
    code, out, err = cli([], tmp_path, f"+import {files}/emptysys.json\nnext\n+path\n")
    assert code == 0 and "Traceback" not in err, err
    assert "imported 3 messages" in err
    assert "Romeo: imported hi" in out and "Romeo: next" in out


# --- `last` per model, --resume without one ------------------------------------------------------

def test_last_is_kept_per_model_and_an_empty_chat_replaces_nothing(files, tmp_path):
    home = tmp_path / "home"
    assert cli([], home, "+gen for model m\n", model=files / "m.pth")[0] == 0
    assert cli([], home, "+gen for model other\n", model=files / "other.pth")[0] == 0
    assert cli([], home, "", model=files / "m.pth")[0] == 0  # start, then end of input
    code, out, err = cli(["--resume"], home, "+tree\n", model=files / "m.pth")
    assert code == 0 and "gen: for model m" in out and "other" not in out, err
    code, out, err = cli(["--resume"], home, "+tree\n", model=files / "other.pth")
    assert code == 0 and "gen: for model other" in out, err


def test_sessions_lists_every_models_last_with_its_model(files, tmp_path):
    home = tmp_path / "home"
    assert cli([], home, "+gen for model other\n", model=files / "other.pth")[0] == 0
    code, _, err = cli(["--no-autosave"], home, "+sessions\n", model=files / "m.pth")
    other = f"`chatrwkv --model {files / 'other.pth'} --resume`"
    assert code == 0 and err.startswith("last (RWKV v7.0 L2 D64, other.pth, saved "), err
    assert err.strip().endswith(other) and len(err.strip().splitlines()) == 1
    assert cli([], home, "+gen for model m\n+save named\n", model=files / "m.pth")[0] == 0
    code, _, err = cli(["--no-autosave"], home, "+sessions\n", model=files / "m.pth")
    lines = err.strip().splitlines()
    assert code == 0 and lines[0] == "named", err
    assert lines[1].startswith("last (this model, m.pth, saved ") and \
        lines[1].endswith("`--resume` continues it")
    assert lines[2].startswith("last (RWKV v7.0 L2 D64, other.pth") and lines[2].endswith(other)
    assert len(lines) == 3  # the `.previous` copies are not listed


def test_resume_without_a_saved_conversation_starts_fresh(files, tmp_path):
    code, out, err = cli(["--resume"], tmp_path, "+gen hi\n", model=files / "m.pth")
    assert code == 0 and out.strip()
    one_line(err, "no saved conversation for this model")


def test_an_autosave_that_cannot_write_is_one_line(files, tmp_path):
    (tmp_path / "states").mkdir()
    (tmp_path / "states" / "last").write_text("a file where the folder should be")
    code, out, err = cli([], tmp_path, "+gen hello\n", model=files / "m.pth")
    assert code == 0 and out.strip()
    one_line(err, "autosave failed")


# --- signals -------------------------------------------------------------------------------------

def _started(files, home):
    cmd = [sys.executable, "-m", "chatrwkv", "--model", str(files / "m.pth"), "--seed", "1",
           "--max-tokens", "3"]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env(home))
    p.stdin.write(b"+gen hello\n")
    p.stdin.flush()
    p.stdout.readline()  # the reply: the chat now waits for the next line
    return p


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130),
                                       (signal.SIGHUP, 129)])
def test_a_signal_while_waiting_saves_the_chat(files, tmp_path, sig, code):
    p = _started(files, tmp_path)
    time.sleep(0.3)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == code and b"Traceback" not in err, err
    assert len(list((tmp_path / "states" / "last").glob("*.session"))) == 1


def test_resume_hint_names_the_model_except_the_demo():
    from chatrwkv.autosave import resume_hint
    from chatrwkv.defaults import DEMO_MODEL

    assert resume_hint(str(DEMO_MODEL), DEMO_MODEL) == "chatrwkv --resume"
    assert resume_hint("/m/a b.pth", DEMO_MODEL) == "chatrwkv --model '/m/a b.pth' --resume"
    assert resume_hint(None, DEMO_MODEL) == "chatrwkv --model PATH --resume"
