"""A loopback HTTP server answering the few Hugging Face hub endpoints that `chatrwkv pull` uses.

- `GET /api/models/{owner}/{repo}/tree/{revision}[/{folder}]`: the file listing (JSON), with
  the LFS sha256 of each file, as `HfApi.list_repo_tree` reads it;
- `GET|HEAD /{owner}/{repo}/resolve/{revision}/{path}`: the bytes, with ETag, Content-Length and
  `Range: bytes=N-` answered by 206 + Content-Range, as `http_get` resumes with.

Faults for the tests: `cut_after` (bytes of the file after which the next `cut_times`
downloads are dropped), `fail_status` (every file request answered with that status;
`fail_after_cut` sets it when a download is cut), and `declared_sha256` to announce a hash that
the served bytes do not have.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_TREE = re.compile(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?")
_RESOLVE = re.compile(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)")
_COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.declared_sha256: dict[tuple[str, str], str] = {}
        self.cut_after: int | None = None
        self.cut_times = 0            # how many more downloads to cut (after which: served whole)
        self.fail_status: int | None = None
        self.fail_after_cut: int | None = None   # status for every request after a cut
        self.requests: list[tuple[str, str, str | None]] = []   # (method, path, Range)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, repo_id: str, path: str, data: bytes) -> None:
        self.repos.setdefault(repo_id, {})[path] = data

    def sha256(self, repo_id: str, path: str) -> str:
        declared = self.declared_sha256.get((repo_id, path))
        return declared or hashlib.sha256(self.repos[repo_id][path]).hexdigest()

    def downloads(self) -> list[tuple[str, str | None]]:
        return [(p, r) for m, p, r in self.requests if m == "GET" and "/resolve/" in p]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:   # keep pytest output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            path = urlsplit(self.path).path
            hub.requests.append((self.command, path, self.headers.get("Range")))
            if (m := _TREE.fullmatch(path)) is not None:
                self._tree(m.group(1), unquote(m.group(3) or "").strip("/"))
            elif (m := _RESOLVE.fullmatch(path)) is not None:
                self._file(m.group(1), unquote(m.group(3)), head)
            else:
                self._error(404, "EntryNotFound", "no such endpoint")

        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":   # a body after HEAD would corrupt the kept-alive link
                self.wfile.write(body)

        def _tree(self, repo_id: str, folder: str) -> None:
            if repo_id not in hub.repos:
                return self._error(404, "RepoNotFound", "Repository not found")
            prefix = folder + "/" if folder else ""
            entries, folders = [], set()
            for name, data in sorted(hub.repos[repo_id].items()):
                if not name.startswith(prefix):
                    continue
                rest = name[len(prefix):]
                if "/" in rest:
                    folders.add(prefix + rest.split("/")[0])
                    continue
                entries.append({"type": "file", "path": name, "size": len(data),
                                "oid": hashlib.sha1(data).hexdigest(),
                                "lfs": {"oid": hub.sha256(repo_id, name), "size": len(data),
                                        "pointerSize": 134}})
            if folder and not entries and not folders:
                return self._error(404, "EntryNotFound", f"{folder} does not exist")
            entries += [{"type": "directory", "path": f, "oid": "0" * 40, "size": 0}
                        for f in sorted(folders)]
            body = json.dumps(entries).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _file(self, repo_id: str, name: str, head: bool) -> None:
            if repo_id not in hub.repos:
                return self._error(404, "RepoNotFound", "Repository not found")
            data = hub.repos[repo_id].get(name)
            if data is None:
                return self._error(404, "EntryNotFound", f"{name} does not exist")
            if hub.fail_status is not None:
                return self._error(hub.fail_status, "Unavailable", "try again later")
            start = 0
            if (r := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")) is not None:
                start = int(r.group(1))
            self.send_response(206 if start else 200)
            self.send_header("ETag", f'"{hub.sha256(repo_id, name)}"')
            self.send_header("X-Repo-Commit", _COMMIT)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if head:
                return
            end = len(data)
            if hub.cut_after is not None and hub.cut_times > 0 and start < hub.cut_after:
                hub.cut_times -= 1
                hub.fail_status = hub.fail_after_cut
                end = hub.cut_after
                self.close_connection = True   # fewer bytes than announced: a dropped link
            self.wfile.write(data[start:end])
            self.wfile.flush()

    return Handler
