"""`chatrwkv pull SPEC`, `list` and `info MODEL`: official checkpoints from the Hugging Face hub.

A pull goes: SPEC -> one remote file (an explicit `owner/repo/path.pth`, or a short name matched
against the files listed in the official repositories, newest wins) -> a resumable download into
`models/.partial/` -> size and sha256 check -> the model is loaded once -> atomic rename into the
models directory. Nothing that failed a step is ever left where a model is looked for.

The hub address is `$HF_ENDPOINT` read at call time (huggingface_hub reads it once, at import).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, unquote

from . import __version__
from .errors import ChatRWKVError, CheckpointError, first_line
from .modelnames import (
    SHORT_NAME_HELP,
    Release,
    format_size,
    newest,
    parse_release,
    parse_short_name,
    version_label,
)
from .modelstore import (
    PARTIAL_DIR,
    LocalModel,
    check_model,
    local_models,
    models_dir,
    read_meta,
    resolve_model,
    tokenizer_name,
    write_meta,
)

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT = 10.0  # seconds for the first connection (huggingface_hub's own default)
_HASH_CHUNK = 1 << 23

__all__ = ["RemoteFile", "find_remote", "main", "pull", "resolve_model"]


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    repo_id: str
    path: str
    size: int
    sha256: str | None      # from the LFS pointer; checkpoints are always LFS files
    revision: str = "main"

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return f"{self.repo_id}/{self.path}"


class RepoNotFound(ChatRWKVError):
    pass


class Hub:
    """The few hub calls a pull needs, each failure turned into one line."""

    def __init__(self, endpoint: str | None = None):
        from huggingface_hub import HfApi

        self.endpoint = endpoint or hub_endpoint()
        self.api = HfApi(endpoint=self.endpoint, library_name="chatrwkv",
                         library_version=__version__)
        self._reached = False

    def reach(self) -> None:
        """One request without retries before the first real one. huggingface_hub retries a
        failed connection five times with back-off (1+2+4+8+8 s), which is right for a link that
        drops mid-download and wrong for a machine that is offline: that gets one line at once.
        The probe goes through huggingface_hub's own client, so proxies and HF_HUB_OFFLINE count."""
        if self._reached:
            return
        from huggingface_hub.utils import get_session

        with self.errors(self.endpoint):
            get_session().head(self.endpoint + "/", timeout=PROBE_TIMEOUT)
        self._reached = True  # any HTTP answer will do: the hub is there

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        from huggingface_hub.errors import (
            HfHubHTTPError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
        from huggingface_hub.utils import httpx

        try:
            yield
        except OfflineModeIsEnabled:
            raise ChatRWKVError("HF_HUB_OFFLINE is set: cannot reach the hub") from None
        except RepositoryNotFoundError:
            raise RepoNotFound(f"{what}: no such repository on {self.endpoint}") from None
        except RevisionNotFoundError:
            raise ChatRWKVError(f"{what}: no such revision on {self.endpoint}") from None
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else "an error"
            raise ChatRWKVError(f"{what}: the hub at {self.endpoint} answered {status}") from None
        except httpx.HTTPError as e:
            raise ChatRWKVError(f"cannot reach the hub at {self.endpoint} ({type(e).__name__}: "
                                f"{first_line(e)}); check the network connection") from None

    def list_files(self, repo_id: str, folder: str | None = None,
                   revision: str = "main") -> list[RemoteFile]:
        from huggingface_hub.hf_api import RepoFile

        self.reach()
        with self.errors(repo_id):
            entries = list(self.api.list_repo_tree(repo_id, path_in_repo=folder,
                                                   revision=revision))
        return [RemoteFile(repo_id, e.path, e.size, e.lfs.sha256 if e.lfs else None, revision)
                for e in entries if isinstance(e, RepoFile)]

    def download(self, remote: RemoteFile, part: Path) -> None:
        """Append the missing bytes of `remote` to `part` (a Range request resumes it)."""
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers

        # Built here: hf_hub_url() ignores its endpoint when it equals the import-time one.
        url = (f"{self.endpoint}/{remote.repo_id}/resolve/{quote(remote.revision, safe='')}/"
               f"{quote(remote.path)}")
        headers = build_hf_headers(library_name="chatrwkv", library_version=__version__)
        have = part.stat().st_size if part.exists() else 0
        try:
            self.reach()
            with self.errors(str(remote)), part.open("ab") as f:
                http_get(url, f, resume_size=have, headers=headers, expected_size=remote.size,
                         displayed_filename=remote.filename)
        except ChatRWKVError as e:
            raise ChatRWKVError(_stopped(remote, part, str(e))) from None
        except OSError as e:   # the size check of http_get, or the disk
            raise ChatRWKVError(_stopped(remote, part, first_line(e))) from None


def _stopped(remote: RemoteFile, part: Path, why: str) -> str:
    have = part.stat().st_size if part.exists() else 0
    return (f"download of {remote.filename} stopped at {_bytes(have)} of {_bytes(remote.size)}: "
            f"{why}; run the same pull again to resume")


# --- SPEC -> remote file ---------------------------------------------------------------------

_REPO_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")  # the hub's rule


def parse_explicit(spec: str) -> tuple[str, str, str] | None:
    """`owner/repo/path/file.pth` (or a hub URL of it) -> (repo_id, path, revision)."""
    text = spec.strip()
    for prefix in ("hf://", DEFAULT_ENDPOINT + "/", hub_endpoint() + "/"):
        text = text.removeprefix(prefix)
    parts = [p for p in text.split("/") if p]
    if len(parts) < 3 or "://" in text:
        return None
    revision = "main"
    if len(parts) >= 5 and parts[2] in ("blob", "resolve"):
        revision, parts = unquote(parts[3]), parts[:2] + parts[4:]
    if not all(_REPO_PART.fullmatch(p) for p in parts[:2]):
        raise ChatRWKVError(f"'{spec[:120]}': not owner/repository/file (a repository name is "
                            "letters, digits, '-', '_' and '.')")
    return f"{parts[0]}/{parts[1]}", unquote("/".join(parts[2:])), revision


def find_remote(spec: str, hub: Hub) -> RemoteFile:
    explicit = parse_explicit(spec)
    if explicit is not None:
        repo_id, path, revision = explicit
        folder = path.rsplit("/", 1)[0] if "/" in path else None
        files = hub.list_files(repo_id, folder, revision)
        for f in files:
            if f.path == path:
                return f
        raise ChatRWKVError(f"{repo_id} has no file '{path}'" + _some(f.path for f in files))
    short = parse_short_name(spec)
    if short is None:
        raise ChatRWKVError(f"'{spec}' is neither owner/repo/file.pth nor a model name "
                            f"({SHORT_NAME_HELP})")
    family: list[tuple[Release, RemoteFile]] = []
    for repo_id in short.repos():
        try:
            files = hub.list_files(repo_id)
        except RepoNotFound:
            continue   # per-size repositories (rwkv-4-pile-1b5) exist only for real sizes
        family += [(r, f) for f in files
                   if (r := parse_release(f.path)) is not None and short.matches_family(r)]
    best = newest([r for r, _ in family if short.matches(r)])
    if best is None:
        sizes = sorted({r.size for r, _ in family})
        hint = (f"; sizes found: {', '.join(format_size(s) for s in sizes)}" if sizes
                else f" (looked in {', '.join(short.repos())})")
        raise ChatRWKVError(f"no official model matches '{spec}'{hint}")
    return next(f for r, f in family if r == best)


def _some(names: Iterable[str]) -> str:
    names = [n for n in names if n.endswith((".pth", ".safetensors"))]
    return f" (it has: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" if names else ""


# --- pull -------------------------------------------------------------------------------------

def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def pull(spec: str, root: Path | None = None, hub: Hub | None = None,
         say: Callable[[str], None] = print) -> LocalModel:
    """Download, check and install one model; returns it. `say` gets the progress lines."""
    from filelock import FileLock, Timeout

    root = models_dir() if root is None else root
    hub = Hub() if hub is None else hub
    remote = find_remote(spec, hub)
    target = root / remote.filename
    say(f"{spec} -> {remote} ({_bytes(remote.size)})" if str(remote) != spec
        else f"{remote} ({_bytes(remote.size)})")
    if target.is_file() and remote.sha256 and read_meta(target).get("sha256") == remote.sha256:
        say(f"{target.stem} is already here and up to date")
        return LocalModel(target, read_meta(target))

    partial = root / PARTIAL_DIR
    partial.mkdir(parents=True, exist_ok=True)
    # Keyed by content hash: a resumed download never mixes two versions of a file.
    part = partial / f"{remote.filename}.{(remote.sha256 or 'nosha')[:16]}.part"
    try:
        # Two pulls appending to one .part would corrupt it; the 0-byte .lock files stay.
        with FileLock(str(part) + ".lock", timeout=0):
            _fetch_and_check(remote, part, hub, say)
            facts = check_model(part)
            meta = {"repo": remote.repo_id, "path": remote.path, "revision": remote.revision,
                    "sha256": remote.sha256, "size": remote.size, "endpoint": hub.endpoint,
                    "pulled": datetime.datetime.now(datetime.timezone.utc).isoformat(
                        timespec="seconds"), **facts}
            write_meta(target, meta)
            os.replace(part, target)
    except Timeout:
        raise ChatRWKVError(f"another chatrwkv pull is downloading {remote.filename}") from None
    except CheckpointError as e:
        part.unlink(missing_ok=True)
        reason = str(e).removeprefix(f"{part}: ")
        raise ChatRWKVError(f"{remote}: downloaded, but it is not a usable RWKV checkpoint "
                            f"({reason}); the file was removed") from None
    return LocalModel(target, meta)


def _fetch_and_check(remote: RemoteFile, part: Path, hub: Hub,
                     say: Callable[[str], None]) -> None:
    have = part.stat().st_size if part.exists() else 0
    if have > remote.size:
        part.unlink()
        have = 0
    free = shutil.disk_usage(part.parent).free
    if remote.size - have > free:
        raise ChatRWKVError(f"not enough disk space in {part.parent} for {remote.filename}: "
                            f"needs {_bytes(remote.size - have)}, {_bytes(free)} free")
    if have:
        say(f"resuming at {_bytes(have)} of {_bytes(remote.size)}")
    hub.download(remote, part)
    if remote.sha256:
        say("checking sha256 ...")
        if sha256_of(part) != remote.sha256:
            part.unlink()
            raise ChatRWKVError(f"download of {remote} is damaged (sha256 does not match the "
                                "hub's); the file was removed, run the pull again")
    say("loading it once to check ...")


# --- CLI --------------------------------------------------------------------------------------

def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} GB"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def _tables(n: int) -> str:
    """What `info`'s embedding-tables line counts (RWKVModel.embedding_tables)."""
    if n == 1:
        return "the embedding; a token reads one row of it"
    return f"the embedding and {n - 1} per-layer DeepEmbed tables; a token reads one row of each"


def _cmd_list(console) -> int:
    from rich.table import Table

    models = local_models()
    if not models:
        # one line whatever the width (a wrapped hint breaks the command in two)
        console.print(f"no models in {models_dir()} yet; get one with: chatrwkv pull g1-0.4b",
                      soft_wrap=True, markup=False)
        _list_caches(console)
        return 0
    table = Table(title=str(models_dir()), title_justify="left")
    for col in ("NAME", "VERSION", "PARAMS", "TOKENIZER", "FILE SIZE"):
        table.add_column(col, justify="right" if col in ("PARAMS", "FILE SIZE") else "left")
    for m in models:
        facts = m.facts()
        size = _bytes(m.path.stat().st_size)
        if facts is None:
            table.add_row(m.name, "not a checkpoint", "", "", size)
            continue
        version = version_label(facts.version) if facts.version else "unknown"
        table.add_row(m.name, version, _params(facts.params), tokenizer_name(facts.vocab_size),
                      size)
    console.print(table)
    _list_caches(console)
    return 0


def _list_caches(console) -> None:
    """The converted-weight caches (`chatrwkv cache clear` removes them), if there are any."""
    from rich.table import Table

    from .cachecmd import cache_rows

    rows = cache_rows()
    if rows:
        table = Table(title="converted-weight caches (remove: chatrwkv cache clear)",
                      title_justify="left")
        for col in ("CACHE", "DTYPE", "SIZE", "FROM"):
            table.add_column(col, justify="right" if col == "SIZE" else "left")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def _cmd_info(console, name: str) -> int:
    from rich.table import Table

    path = resolve_model(name)
    info = check_model(path)
    meta = read_meta(path)
    tables = (f"{info['table_params']:,} ({_params(info['table_params'])}) of the parameters: "
              f"{_tables(info['n_tables'])}")
    rows = [
        ("file", str(path)), ("file size", _bytes(path.stat().st_size)),
        ("source", f"{meta['repo']}/{meta['path']}" if meta.get("repo") else "(added by hand)"),
        ("version", f"RWKV {version_label(info['version'])}"), ("layers", str(info["n_layer"])),
        ("width", str(info["n_embd"])), ("heads", f"{info['n_head']} x {info['head_size']}"),
        ("ffn width", str(info["ffn_dim"])),
        ("parameters", f"{info['params']:,} ({_params(info['params'])})"),
        ("embedding tables", tables),
        ("vocabulary", f"{info['vocab_size']} ({tokenizer_name(info['vocab_size'])})"),
        ("state size", f"{info['state_bytes']:,} bytes ({_bytes(info['state_bytes'])})"),
        ("dtype on disk", info["disk_dtype"]),
    ]
    if meta.get("sha256"):
        rows.append(("sha256", meta["sha256"]))
    table = Table(show_header=False, box=None, title=path.stem, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatrwkv", description="RWKV models on this machine.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pull", help="download an official model from the Hugging Face hub")
    p.add_argument("spec", help=f"owner/repo/file.pth or a name: {SHORT_NAME_HELP}")
    sub.add_parser("list", help="the models in the local models directory")
    p = sub.add_parser("info", help="version, size, tokenizer and state size of a model")
    p.add_argument("model", help="a path, or the name of a local model")
    return parser


def main(argv: list[str]) -> int:
    """`pull SPEC` | `list` | `info MODEL`; errors are one line on stderr and exit status 1."""
    from rich.console import Console

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:   # argparse has printed the usage line
        return int(e.code or 0)
    out = Console(highlight=False)
    try:
        if args.command == "pull":
            model = pull(args.spec, say=lambda line: print(line, file=sys.stderr))
            print(f"ready: {model.name}  (chat with: chatrwkv --model {model.name})")
            return 0
        if args.command == "list":
            return _cmd_list(out)
        return _cmd_info(out, args.model)
    except ChatRWKVError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted" + ("; the partial download is kept: run the same pull to resume"
                               if args.command == "pull" else ""), file=sys.stderr)
        return 130
