"""`chatrwkv pull / list / info` and model names, against a loopback fake of the hub.

Nothing here reaches the internet: `HF_ENDPOINT` (and huggingface_hub's import-time copy of it)
points at `tests/fakehub.py`, which serves a tiny random RWKV-7 checkpoint.
"""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path

import pytest
from fakehub import FakeHub

from chatrwkv import hub as hubmod
from chatrwkv.errors import ChatRWKVError
from chatrwkv.modelnames import (
    format_size,
    newest,
    parse_release,
    parse_short_name,
    repo_size_token,
)
from chatrwkv.modelstore import local_models, models_dir, resolve_model, tokenizer_name
from chatrwkv.synth import write_checkpoint

G1 = "BlinkDL/rwkv7-g1"
CHUNK = 10 * 1024 * 1024   # huggingface_hub writes downloads in chunks of this size


@pytest.fixture(scope="module")
def ckpt_bytes(tmp_path_factory) -> bytes:
    # vocab 65536 makes it a World model and the file (17 MB) longer than one download chunk.
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    write_checkpoint(path, "7.0", n_layer=2, n_embd=64, vocab_size=65536, head_size=16)
    return path.read_bytes()


@pytest.fixture
def fake(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    server = FakeHub()
    server.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    # huggingface_hub copied HF_ENDPOINT at import; its telemetry call still reads that copy.
    monkeypatch.setattr(hf_constants, "ENDPOINT", server.url)
    monkeypatch.setattr(hf_constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agents.json"))
    monkeypatch.setenv("CHATRWKV_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(time, "sleep", lambda s: None)   # huggingface_hub's retry back-off
    outside: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            outside.append(host)   # recorded: some callers swallow the error
            raise OSError(f"test tried to reach {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    yield server
    server.stop()
    assert outside == [], "a test tried to reach the internet"


def models(root: Path) -> list[str]:
    return [m.path.name for m in local_models(root)]


# --- names (pure) -----------------------------------------------------------------------------

@pytest.mark.parametrize("filename, expected", [
    ("rwkv7-g1a-0.4b-20250905-ctx4096.pth", ("g", "7", "g1a", 400, "20250905")),
    ("rwkv7-g0a3-7.2b-20251029-ctx8192.pth", ("g", "7", "g0a3", 7200, "20251029")),
    ("rwkv7-g1d-13.3b-20260131-ctx8192.pth", ("g", "7", "g1d", 13300, "20260131")),
    ("RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth", ("world", "7", "", 100, "20241210")),
    ("RWKV-x060-World-1B6-v2.1-20240328-ctx4096.pth", ("world", "6", "", 1600, "20240328")),
    ("RWKV-5-World-3B-v2-20231118-ctx16k.pth", ("world", "5", "", 3000, "20231118")),
    ("RWKV-4-World-1.5B-v1-fixed-20230612-ctx4096.pth", ("world", "4", "", 1500, "20230612")),
    ("RWKV-4-Pile-169M-20220807-8023.pth", ("pile", "4", "", 169, "20220807")),
    ("RWKV-4-Pile-14B-20230313-ctx8192-test1050.pth", ("pile", "4", "", 14000, "20230313")),
    # variants and other files are never picked by a short name
    ("rwkv7-g1h_preview4533-2.9b-20260623-ctx8192.pth", None),
    ("RWKV-4-Pile-7B-Instruct-test4-20230326.pth", None),
    ("RWKV-4-World-CHNtuned-1.5B-v1-20230620-ctx4096.pth", None),
    ("rwkv7-g1a-0.4b-20250905-ctx4096.gguf", None),
    ("README.md", None),
])
def test_parse_release(filename, expected):
    r = parse_release(filename)
    got = None if r is None else (r.line.family, r.line.version, r.gen, r.size, r.date)
    assert got == expected


@pytest.mark.parametrize("name, filename, matches", [
    ("g1-0.4b", "rwkv7-g1a-0.4b-20250905-ctx4096.pth", True),
    ("g1-0.4b", "rwkv7-g1-0.4b-20250324-ctx4096.pth", True),
    ("g1a-0.4b", "rwkv7-g1-0.4b-20250324-ctx4096.pth", False),
    ("g1a-1.5b", "rwkv7-g1a3-1.5b-20251015-ctx4096.pth", True),
    ("g1-7.2b", "rwkv7-g0a3-7.2b-20251029-ctx8192.pth", False),
    ("g1-0.4b", "rwkv7-g1a-1.5b-20250905-ctx4096.pth", False),
    ("world-1.5b", "RWKV-x070-World-1.5B-v3-20250127-ctx4096.pth", True),
    ("world-1.5b", "RWKV-5-World-1B5-v2-20231025-ctx4096.pth", True),
    ("v6-1.6b", "RWKV-x060-World-1B6-v2.1-20240328-ctx4096.pth", True),
    ("v7-0.4b", "rwkv7-g1a-0.4b-20250905-ctx4096.pth", True),
    ("v6-1.6b", "RWKV-x070-World-1.5B-v3-20250127-ctx4096.pth", False),
    ("pile-169m", "RWKV-4-Pile-169M-20220807-8023.pth", True),
    ("PILE-169M", "RWKV-4-Pile-169M-20220807-8023.pth", True),
])
def test_short_name_matches(name, filename, matches):
    assert parse_short_name(name).matches(parse_release(filename)) is matches


def test_short_name_repos_and_sizes():
    assert parse_short_name("pile-1b5").repos() == ["BlinkDL/rwkv-4-pile-1b5"]
    assert parse_short_name("pile-169m").repos() == ["BlinkDL/rwkv-4-pile-169m"]
    assert parse_short_name("g1-0.4b").repos() == [G1]
    assert parse_short_name("world-3b").repos()[0] == "BlinkDL/rwkv-7-world"
    assert len(parse_short_name("world-3b").repos()) == 4
    assert [repo_size_token(s) for s in (169, 430, 1500, 3000, 14000)] == \
        ["169m", "430m", "1b5", "3b", "14b"]
    assert [format_size(s) for s in (100, 400, 1600, 169, 7200)] == \
        ["0.1b", "0.4b", "1.6b", "169m", "7.2b"]
    for bad in ("g1", "0.4b", "gpt-1b", "g1-big", "g1-1.5b6", "world-"):
        assert parse_short_name(bad) is None, bad


def test_parse_explicit_spec():
    parse = hubmod.parse_explicit
    assert parse(f"{G1}/a/b.pth") == (G1, "a/b.pth", "main")
    assert parse(f"https://huggingface.co/{G1}/blob/v1.0/x.pth") == (G1, "x.pth", "v1.0")
    assert parse(f"hf://{G1}/resolve/main/x%20y.pth") == (G1, "x y.pth", "main")
    assert parse("g1-0.4b") is None and parse(f"{G1}") is None
    assert parse("https://example.com/a/b/c.pth") is None


def test_newest_is_by_date_then_generation():
    files = ["rwkv7-g1-0.4b-20250324-ctx4096.pth", "rwkv7-g1b-0.4b-20251001-ctx8192.pth",
             "rwkv7-g1a-0.4b-20250905-ctx4096.pth"]
    assert newest([parse_release(f) for f in files]).filename == files[1]
    assert newest([]) is None


def test_tokenizer_names():
    assert tokenizer_name(65536) == "World"
    assert tokenizer_name(50277).startswith("Pile")
    assert "custom" in tokenizer_name(1000)


# --- local models -----------------------------------------------------------------------------

def test_models_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CHATRWKV_HOME", str(tmp_path / "h"))
    assert models_dir() == tmp_path / "h" / "models"
    monkeypatch.delenv("CHATRWKV_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert models_dir() == tmp_path / "c" / "chatrwkv" / "models"


def test_resolve_model(tmp_path):
    root = tmp_path / "models"
    (root / ".partial").mkdir(parents=True)
    names = ["rwkv7-g1-0.4b-20250324-ctx4096.pth", "rwkv7-g1a-0.4b-20250905-ctx4096.pth",
             "RWKV-x060-World-1B6-v2.1-20240328-ctx4096.pth", "mine.safetensors"]
    for n in names:
        (root / n).write_bytes(b"x")
    (root / ".partial" / "rwkv7-g1b-0.4b-20251001-ctx4096.pth.0123.part").write_bytes(b"x")
    elsewhere = tmp_path / "some.pth"
    elsewhere.write_bytes(b"x")

    assert resolve_model(str(elsewhere), root) == elsewhere
    assert resolve_model("mine", root) == root / "mine.safetensors"
    assert resolve_model(names[0], root) == root / names[0]
    assert resolve_model(f"{G1}/{names[0]}", root) == root / names[0]
    # the name it was pulled by: the newest local match, never a partial download
    assert resolve_model("g1-0.4b", root) == root / names[1]
    assert resolve_model("v6-1.6b", root) == root / names[2]
    assert resolve_model("x060", root) == root / names[2]   # a unique part of a name
    with pytest.raises(ChatRWKVError, match="ambiguous"):
        resolve_model("rwkv7", root)
    with pytest.raises(ChatRWKVError, match="chatrwkv pull g1-1.5b"):
        resolve_model("g1-1.5b", root)
    with pytest.raises(ChatRWKVError, match="no such file"):
        resolve_model(str(tmp_path / "missing.pth"), root)


# --- pull against the fake hub ----------------------------------------------------------------

def test_pull_explicit_path_then_list_and_info(fake, ckpt_bytes, capsys):
    fake.add(G1, "rwkv7-g1a-0.1b-20250728-ctx4096.pth", ckpt_bytes)
    name = "rwkv7-g1a-0.1b-20250728-ctx4096"
    assert hubmod.main(["pull", f"{G1}/{name}.pth"]) == 0
    root = models_dir()
    assert (root / f"{name}.pth").read_bytes() == ckpt_bytes
    assert models(root) == [f"{name}.pth"]
    meta = local_models(root)[0].meta
    assert meta["sha256"] == hashlib.sha256(ckpt_bytes).hexdigest()
    assert (meta["repo"], meta["version"], meta["n_layer"], meta["n_embd"]) == (G1, "7.0", 2, 64)
    assert not list((root / ".partial").glob("*.part"))
    capsys.readouterr()

    (root / "mine.pth").write_bytes(ckpt_bytes)       # copied in by hand: no sidecar
    (root / "junk.pth").write_bytes(b"not a model")
    assert hubmod.main(["list"]) == 0
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()
            if line.startswith("│")}
    assert rows.keys() == {name, "mine", "junk"}
    for row in (rows[name], rows["mine"]):
        assert "v7.0" in row and "World" in row and "17.1 MB" in row and "8.5M" in row
    assert "not a checkpoint" in rows["junk"]
    assert hubmod.main(["info", "mine"]) == 0
    assert "(added by hand)" in capsys.readouterr().out

    assert hubmod.main(["info", "g1-0.1b"]) == 0
    out = capsys.readouterr().out
    params = 2 * 65536 * 64   # emb + head dominate: at least that many
    assert f"{G1}/{name}.pth" in out and "RWKV v7.0" in out
    assert "4 x 16" in out and "65536 (World)" in out and "bf16" in out
    # v7 state: two [L, C] token-shift vectors and [L, H, N, N] fp32 WKV matrices
    assert f"{(2 * 2 * 64 + 2 * 4 * 16 * 16) * 4:,} bytes" in out
    listed = int(next(line for line in out.splitlines() if "parameters" in line)
                 .split()[1].replace(",", ""))
    assert listed > params

    # pulling again finds it up to date and downloads nothing
    before = len(fake.downloads())
    assert hubmod.main(["pull", "g1-0.1b"]) == 0
    assert len(fake.downloads()) == before


def test_pull_short_name_newest_wins(fake, ckpt_bytes):
    for f in ("rwkv7-g1-0.1b-20250307-ctx4096.pth", "rwkv7-g1b-0.1b-20251001-ctx8192.pth",
              "rwkv7-g1a-0.1b-20250728-ctx4096.pth", "rwkv7-g1a-0.4b-20260101-ctx4096.pth",
              "rwkv7-g1h_preview4533-0.1b-20260623-ctx8192.pth"):
        fake.add(G1, f, ckpt_bytes)
    fake.add("BlinkDL/rwkv-7-world", "RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth", ckpt_bytes)
    fake.add("BlinkDL/rwkv-5-world", "RWKV-5-World-0.1B-v1-20250101-ctx4096.pth", ckpt_bytes)

    fake.add(G1, "old/rwkv7-g1c-0.1b-20990101-ctx4096.pth", b"in a folder: not listed")
    found = hubmod.find_remote(f"{G1}/old/rwkv7-g1c-0.1b-20990101-ctx4096.pth", hubmod.Hub())
    assert (found.path, found.size) == ("old/rwkv7-g1c-0.1b-20990101-ctx4096.pth", 23)

    model = hubmod.pull("g1-0.1b", say=lambda line: None)
    assert model.name == "rwkv7-g1b-0.1b-20251001-ctx8192"
    assert fake.downloads() == [(f"/{G1}/resolve/main/{model.path.name}", None)]
    assert resolve_model("g1-0.1b") == model.path
    # across repositories: the v5 World file is newer than the v7 one; missing repos are skipped
    assert hubmod.pull("world-0.1b", say=lambda line: None).name.startswith("RWKV-5-World")
    assert models(models_dir()) == sorted(["rwkv7-g1b-0.1b-20251001-ctx8192.pth",
                                           "RWKV-5-World-0.1B-v1-20250101-ctx4096.pth"])


def test_resume_within_one_pull(fake, ckpt_bytes):
    fake.add(G1, "rwkv7-g1-0.1b-20250307-ctx4096.pth", ckpt_bytes)
    fake.cut_after, fake.cut_times = CHUNK + 1000, 1   # the link drops once, mid-file
    model = hubmod.pull("g1-0.1b", say=lambda line: None)
    assert model.path.read_bytes() == ckpt_bytes
    assert [r for _, r in fake.downloads()] == [None, f"bytes={CHUNK}-"]


def test_interrupted_download_resumes_on_next_pull(fake, ckpt_bytes, capsys):
    fake.add(G1, "rwkv7-g1-0.1b-20250307-ctx4096.pth", ckpt_bytes)
    fake.cut_after, fake.cut_times, fake.fail_after_cut = CHUNK + 1000, 1, 503
    assert hubmod.main(["pull", "g1-0.1b"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: download of rwkv7-g1-0.1b-20250307-ctx4096.pth stopped at")
    assert err.endswith("run the same pull again to resume")
    root = models_dir()
    assert models(root) == []                                # a partial file is no model
    with pytest.raises(ChatRWKVError):
        resolve_model("g1-0.1b")
    (part,) = (root / ".partial").glob("*.part")
    assert part.stat().st_size == CHUNK

    fake.fail_status = None
    model = hubmod.pull("g1-0.1b", say=lambda line: None)
    assert model.path.read_bytes() == ckpt_bytes
    assert fake.downloads()[-1][1] == f"bytes={CHUNK}-"    # only the missing bytes
    assert not part.exists()


def test_server_down(monkeypatch, tmp_path, fake):
    with socket.socket() as s:   # a port on which nobody listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ChatRWKVError, match=rf"cannot reach the hub at http://127.0.0.1:{port}"):
        hubmod.pull("g1-0.4b", say=lambda line: None)


def test_errors_are_one_line(fake, ckpt_bytes, capsys):
    fake.add(G1, "rwkv7-g1a-0.1b-20250728-ctx4096.pth", ckpt_bytes)
    fake.add(G1, "rwkv7-g1-1.5b-20250429-ctx4096.pth", ckpt_bytes)
    cases = [
        (["pull", "g1-0.5b"], "no official model matches 'g1-0.5b'; sizes found: 0.1b, 1.5b"),
        (["pull", "pile-169m"], ("no official model matches 'pile-169m' (looked in "
                                 "BlinkDL/rwkv-4-pile-169m)")),
        (["pull", f"{G1}/nope.pth"], f"{G1} has no file 'nope.pth' (it has: "),
        (["pull", "someone/else/model.pth"], "someone/else: no such repository"),
        (["pull", "llama-7b"], "'llama-7b' is neither owner/repo/file.pth nor a model name"),
        (["info", "nothing-here"], "no model named 'nothing-here'"),
    ]
    for argv, message in cases:
        assert hubmod.main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}"), err
        assert err.count("\n") == 1, err


def test_damaged_download_is_removed(fake, ckpt_bytes):
    name = "rwkv7-g1-0.1b-20250307-ctx4096.pth"
    fake.add(G1, name, ckpt_bytes)
    fake.declared_sha256[(G1, name)] = "0" * 64   # the bytes on the wire are not the release
    with pytest.raises(ChatRWKVError, match="is damaged .*the file was removed"):
        hubmod.pull("g1-0.1b", say=lambda line: None)
    root = models_dir()
    assert models(root) == [] and not list((root / ".partial").glob("*.part"))


def test_file_that_is_no_checkpoint_is_removed(fake, ckpt_bytes):
    fake.add(G1, "rwkv7-g1-0.1b-20250307-ctx4096.pth", ckpt_bytes[: len(ckpt_bytes) // 2])
    with pytest.raises(ChatRWKVError, match="not a usable RWKV checkpoint.*was removed"):
        hubmod.pull("g1-0.1b", say=lambda line: None)
    root = models_dir()
    assert models(root) == [] and not list((root / ".partial").glob("*.part"))


def test_offline_pull_is_one_line_at_once(tmp_path):
    """No network: one line, no retry lines (huggingface_hub retries a failed connection five
    times over 23 s). Real CLI, real sleep; the endpoint is a loopback port nobody listens on."""
    import os
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_DISABLE_TELEMETRY="1",
               CHATRWKV_HOME=str(tmp_path), HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    out = subprocess.run([sys.executable, "-m", "chatrwkv", "pull", "g1-0.4b"], env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 1
    assert out.stderr.startswith(f"error: cannot reach the hub at http://127.0.0.1:{port}")
    assert out.stderr.count("\n") == 1, out.stderr


def test_list_hint_is_one_line_at_any_width(monkeypatch, tmp_path, capsys):
    home = tmp_path / ("a-long-folder-name-" * 4)
    monkeypatch.setenv("CHATRWKV_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "60")
    assert hubmod.main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.rstrip().endswith("get one with: chatrwkv pull g1-0.4b")
