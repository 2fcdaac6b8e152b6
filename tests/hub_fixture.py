"""A small real HTTP server on loopback that speaks the Hub's read endpoints for arbitrary repos.

The registry's own Hub routes serve only published skills; installing from the Hub also has to read
LoRA adapters and checkpoints, so tests serve those from here, to the real ``huggingface_hub`` client:

* ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``: id, commit sha, siblings;
* ``GET /api/models/{repo}/tree/{rev}``: the file list ``snapshot_download`` walks;
* ``GET|HEAD /{repo}/resolve/{rev}/{file}``: the bytes, with ``X-Repo-Commit``, ``ETag`` and
  ``Content-Length`` (what ``hf_hub_download`` reads); ``Range: bytes=A-B`` answers 206;
* errors the Hub way: 404 + ``X-Error-Code: RepoNotFound|RevisionNotFound|EntryNotFound``; a gated repo
  answers 403 + ``X-Error-Code: GatedRepo``; a token that is not the server's answers 401 with
  ``X-Error-Message: Invalid credentials in Authorization header``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


@dataclass
class HubRepos:
    commits: dict[str, dict[str, dict[str, bytes]]] = field(default_factory=dict)  # repo -> sha -> files
    refs: dict[str, dict[str, str]] = field(default_factory=dict)  # repo -> branch/tag -> sha
    gated: set[str] = field(default_factory=set)
    token: str = "hf_fixture_token"
    requests: list[str] = field(default_factory=list)  # "GET /path", a ranged one with " bytes=A-B"
    ranges: bool = True  # False: answer a Range request with the whole file (as a server ignoring it)

    def push(self, repo: str, files: dict[str, bytes], *, ref: str = "main") -> str:
        """Add a commit holding ``files`` and point ``ref`` at it; returns its 40-hex sha."""
        h = hashlib.sha1(repo.encode())
        for name in sorted(files):
            h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        sha = h.hexdigest()
        self.commits.setdefault(repo, {})[sha] = dict(files)
        self.refs.setdefault(repo, {})[ref] = sha
        return sha

    def push_dir(self, repo: str, directory: Path, *, ref: str = "main") -> str:
        return self.push(repo, {p.name: p.read_bytes() for p in Path(directory).iterdir() if p.is_file()}, ref=ref)


def _handler(repos: HubRepos) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str], *, head: bool = False) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _error(self, status: int, code: str | None, message: str, head: bool) -> None:
            headers = {"Content-Type": "application/json", "X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

        def _commit(self, repo: str, rev: str | None, head: bool) -> tuple[str, dict[str, bytes]] | None:
            auth = self.headers.get("Authorization")
            if auth and auth != f"Bearer {repos.token}":
                self._error(401, None, "Invalid credentials in Authorization header", head)
                return None
            if repo not in repos.commits:
                self._error(404, "RepoNotFound", "Repository not found", head)
                return None
            if repo in repos.gated and auth is None:
                self._error(403, "GatedRepo", "Access to this model is restricted.", head)
                return None
            rev = rev or "main"
            sha = repos.refs[repo].get(rev, rev if rev in repos.commits[repo] else None)
            if sha is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
                return None
            return sha, repos.commits[repo][sha]

        def _route(self, head: bool) -> None:
            path = unquote(self.path.split("?", 1)[0])
            repos.requests.append(f"{self.command} {path}")
            if path.startswith("/api/models/"):
                rest = path[len("/api/models/") :]
                if "/tree/" in rest:
                    repo, _, rev = rest.partition("/tree/")
                    found = self._commit(repo, rev, head)
                    if found is not None:
                        entries = [
                            {"type": "file", "path": n, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                            for n, d in sorted(found[1].items())
                        ]
                        self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, head=head)
                    return
                repo, _, rev = rest.partition("/revision/")
                found = self._commit(repo, rev or None, head)
                if found is None:
                    return
                sha, files = found
                body = {
                    "id": repo, "modelId": repo, "sha": sha, "private": False, "gated": repo in repos.gated,
                    "siblings": [{"rfilename": n} for n in sorted(files)],
                }  # fmt: skip
                self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head=head)
                return
            parts = path.lstrip("/").split("/")
            if "resolve" in parts:
                i = parts.index("resolve")
                repo, rev, name = "/".join(parts[:i]), parts[i + 1], "/".join(parts[i + 2 :])
                found = self._commit(repo, rev, head)
                if found is None:
                    return
                sha, files = found
                if name not in files:
                    self._error(404, "EntryNotFound", f"{name} does not exist", head)
                    return
                data = files[name]
                headers = {
                    "Content-Type": "application/octet-stream",
                    "X-Repo-Commit": sha,
                    "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                    "Accept-Ranges": "bytes",
                }
                wanted = self.headers.get("Range", "")
                if wanted.startswith("bytes=") and not head and repos.ranges:
                    first, _, last = wanted[len("bytes=") :].partition("-")
                    start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
                    repos.requests[-1] += f" bytes={start}-{end}"
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                    self._send(206, data[start : end + 1], headers)
                    return
                self._send(200, data, headers, head=head)
                return
            self._error(404, None, "not found", head)

        def do_GET(self) -> None:
            self._route(False)

        def do_HEAD(self) -> None:
            self._route(True)

    return Handler


class HubServer:
    """``with HubServer(repos) as url:`` serves ``repos`` on 127.0.0.1 until the block ends."""

    def __init__(self, repos: HubRepos) -> None:
        self.repos = repos
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(repos))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> str:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
