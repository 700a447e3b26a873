"""Shared by the reliability tests (faults, kills, hostile input, secrets).

* :func:`deep_verify` / :func:`verify_present`: an independent check (the harness ``Pusher``,
  no ``sync_core`` code) that a tag at a registry resolves fully: the manifest, every child
  manifest and every blob are fetched back and their digests and sizes checked.
* :class:`ScriptedServer`: a threaded HTTP/1.1 server on 127.0.0.1 that answers every request with
  ``handler(request)`` and records what it was sent (headers included), to play a hostile or
  misbehaving registry, token service or storage account.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.harness.images import Pusher, RegistryHTTPError


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Incomplete(AssertionError):
    """A tag at the target references content that is missing or wrong."""


def deep_verify(pusher: Pusher, repo: str, ref: str, *, _seen: set | None = None) -> str:
    """Fetch ``repo:ref`` and everything it references; check every digest and size.

    Returns the manifest digest. Raises :class:`Incomplete` naming what is missing or wrong.
    """
    seen = set() if _seen is None else _seen
    try:
        raw, _, header_digest = pusher.fetch_manifest(repo, ref)
    except RegistryHTTPError as exc:
        raise Incomplete(f"{repo}:{ref}: manifest not fetchable ({exc.status_code})") from None
    digest = sha256(raw)
    if ref.startswith("sha256:") and digest != ref:
        raise Incomplete(f"{repo}@{ref}: content hashes to {digest}")
    if header_digest and header_digest != digest:
        raise Incomplete(f"{repo}:{ref}: Docker-Content-Digest {header_digest}, content {digest}")
    doc = json.loads(raw)
    if "manifests" in doc:
        for child in doc["manifests"]:
            got = deep_verify(pusher, repo, child["digest"], _seen=seen)
            if got != child["digest"]:  # pragma: no cover - deep_verify checked it already
                raise Incomplete(f"{repo}@{child['digest']}: got {got}")
        return digest
    for desc in [doc["config"], *(doc.get("layers") or [])]:
        if desc.get("urls") or (repo, desc["digest"]) in seen:
            continue
        try:
            data = pusher.fetch_blob(repo, desc["digest"])
        except RegistryHTTPError as exc:
            raise Incomplete(
                f"{repo}:{ref}: blob {desc['digest']} not fetchable ({exc.status_code})"
            ) from None
        if len(data) != desc["size"] or sha256(data) != desc["digest"]:
            raise Incomplete(f"{repo}:{ref}: blob {desc['digest']} is {len(data)} bytes hashing to {sha256(data)}")
        seen.add((repo, desc["digest"]))
    return digest


def verify_present(pusher: Pusher, repos: Iterable[str]) -> dict[tuple[str, str], str]:
    """Deep-verify every tag present in ``repos``; ``{(repo, tag): digest}``.

    Raises :class:`Incomplete` if any present tag does not resolve fully: "a tag at the target
    never references missing content".
    """
    found: dict[tuple[str, str], str] = {}
    seen: set = set()
    for repo in repos:
        for tag in pusher.tags(repo):
            found[(repo, tag)] = deep_verify(pusher, repo, tag, _seen=seen)
    return found


# -- a scripted HTTP server ---------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str  # path and query, as sent
    headers: dict[str, str]  # names lower-cased
    body: bytes
    host: str  # this server's 127.0.0.1:port


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def json(cls, obj, status: int = 200, headers: dict | None = None) -> Answer:
        return cls(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode())


Handler = Callable[[Request], Answer]


class ScriptedServer:
    """``ScriptedServer(handler)``: answers with ``handler(request)`` (404 if it returns None).

    ``requests`` lists every request received. ``handler`` may be replaced at any time.
    """

    def __init__(self, handler: Handler | None = None):
        self.handler = handler or (lambda r: None)
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        server = self

        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = b""
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                    body = b"".join(parts)
                elif length:
                    body = self.rfile.read(length)
                req = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                              body, server.host)  # fmt: skip
                with server._lock:
                    server.requests.append(req)
                try:
                    answer = server.handler(req) or Answer(404, body=b"{}")
                except Exception as exc:  # noqa: BLE001 - a test bug: answer 599 and keep serving
                    answer = Answer(599, body=repr(exc).encode())
                self.send_response(answer.status)
                for k, v in answer.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer.body)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _any  # noqa: N815

            def log_message(self, format, *args) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # clients that hang up: not news
        self.port = self._server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def reset(self, handler: Handler | None = None) -> None:
        with self._lock:
            self.requests = []
        if handler is not None:
            self.handler = handler

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# -- a minimal in-memory registry on a ScriptedServer ---------------------------------------------

_V2 = re.compile(r"^/v2/(?P<repo>.+)/(?P<kind>manifests|blobs|tags)/(?P<rest>[^?]*)(?:\?(?P<query>.*))?$")


class FakeRegistry:
    """An in-memory OCI registry (enough for the copy engine), anonymous, Basic or Bearer.

    ``hooks``: functions ``(request) -> Answer | None`` tried first (after the auth check) to
    play a misbehaving registry. ``redirect_blobs_to``: answer blob GETs with a 307 to that
    origin (``/storage/<digest>?sig=...``), as ACR and Alibaba do with their storage accounts.
    Writes are recorded in ``server.requests`` like everything else.
    """

    def __init__(self, *, basic: tuple[str, str] | None = None, bearer: tuple[str, str] | None = None):
        self.basic = basic
        self.bearer = bearer  # (realm, token that is accepted)
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.tags: dict[str, list[str]] = {}
        self.blobs: dict[str, bytes] = {}
        self.uploads: dict[str, bytearray] = {}
        self.hooks: list[Callable[[Request], Answer | None]] = []
        self.redirect_blobs_to: str | None = None
        self.server = ScriptedServer(self.handle)
        self.url, self.host = self.server.url, self.server.host
        self._n = 0

    # -- content ---------------------------------------------------------------------------
    def push(self, repo: str, manifest, tag: str | None = None) -> None:
        """Store a harness ``images.Manifest`` (children and blobs too) under ``repo``."""
        for m in manifest.walk():
            for blob in m.blobs:
                self.blobs[blob.digest] = blob.data
            self.manifests[(repo, m.digest)] = (m.raw, m.media_type)
        if tag:
            self.manifests[(repo, tag)] = (manifest.raw, manifest.media_type)
            self.tags.setdefault(repo, [])
            if tag not in self.tags[repo]:
                self.tags[repo].append(tag)

    def writes(self) -> list[Request]:
        return [r for r in self.server.requests if r.method not in ("GET", "HEAD")]

    def reset(self, content: bool = False) -> None:
        """Forget the requests and hooks (and with ``content``, everything stored)."""
        self.server.reset()
        self.hooks = []
        if content:
            self.manifests, self.tags, self.blobs, self.uploads = {}, {}, {}, {}

    def stop(self) -> None:
        self.server.stop()

    # -- serving ---------------------------------------------------------------------------
    def _challenge(self, r: Request) -> Answer | None:
        auth = r.headers.get("authorization", "")
        if self.basic is not None:
            expected = "Basic " + base64.b64encode(f"{self.basic[0]}:{self.basic[1]}".encode()).decode()
            if auth != expected:
                return Answer.json({"errors": [{"code": "UNAUTHORIZED"}]}, 401,
                                   {"WWW-Authenticate": 'Basic realm="fake"'})  # fmt: skip
        if self.bearer is not None:
            realm, token = self.bearer
            if auth != f"Bearer {token}":
                return Answer.json({"errors": [{"code": "UNAUTHORIZED"}]}, 401,
                                   {"WWW-Authenticate": f'Bearer realm="{realm}",service="fake"'})  # fmt: skip
        return None

    def handle(self, r: Request) -> Answer | None:
        denied = self._challenge(r)
        if denied is not None:
            return denied
        for hook in self.hooks:
            answer = hook(r)
            if answer is not None:
                return answer
        return self.handle_default(r)

    def handle_default(self, r: Request) -> Answer:
        """How a well-behaved registry answers ``r`` (for hooks that alter a normal answer)."""
        path = r.path.split("?", 1)[0]
        if path == "/v2/":
            return Answer.json({})
        if path == "/v2/_catalog":
            return Answer.json({"repositories": sorted(self.tags)})
        m = _V2.match(r.path)
        if not m:
            return Answer.json({"errors": [{"code": "NOT_FOUND"}]}, 404)
        repo, kind, rest, query = m["repo"], m["kind"], m["rest"], m["query"] or ""
        if kind == "tags":
            if repo not in self.tags:
                return Answer.json({"errors": [{"code": "NAME_UNKNOWN"}]}, 404)
            return Answer.json({"name": repo, "tags": list(self.tags[repo])})
        if kind == "manifests":
            if r.method in ("GET", "HEAD"):
                found = self.manifests.get((repo, rest))
                if found is None:
                    return Answer.json({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, 404)
                raw, media_type = found
                return Answer(200, {"Content-Type": media_type, "Docker-Content-Digest": sha256(raw)}, raw)
            if r.method == "PUT":
                self.manifests[(repo, rest)] = (r.body, r.headers.get("content-type", ""))
                self.manifests[(repo, sha256(r.body))] = (r.body, r.headers.get("content-type", ""))
                if not rest.startswith("sha256:"):
                    self.tags.setdefault(repo, []).append(rest)
                return Answer(201, {"Docker-Content-Digest": sha256(r.body)})
            return Answer(405)
        # blobs
        if rest.startswith("uploads"):
            params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
            if r.method == "POST":
                self._n += 1
                uid = f"u{self._n}"
                self.uploads[uid] = bytearray(r.body)
                return Answer(202, {"Location": f"/v2/{repo}/blobs/uploads/{uid}?state=s{self._n}"})
            uid = rest.split("/", 1)[1] if "/" in rest else ""
            if uid not in self.uploads:
                return Answer.json({"errors": [{"code": "BLOB_UPLOAD_UNKNOWN"}]}, 404)
            self.uploads[uid].extend(r.body)
            if r.method == "PATCH":
                return Answer(202, {"Location": f"/v2/{repo}/blobs/uploads/{uid}"})
            if r.method == "PUT":
                data = bytes(self.uploads.pop(uid))
                digest = urllib.parse.unquote(params.get("digest", ""))
                if sha256(data) != digest:
                    return Answer.json({"errors": [{"code": "DIGEST_INVALID"}]}, 400)
                self.blobs[digest] = data
                return Answer(201, {"Docker-Content-Digest": digest})
            return Answer(405)
        data = self.blobs.get(rest)
        if data is None:
            return Answer.json({"errors": [{"code": "BLOB_UNKNOWN"}]}, 404)
        if r.method == "GET" and self.redirect_blobs_to:
            return Answer(307, {"Location": f"{self.redirect_blobs_to}/storage/{rest}?sig=signed"})
        return Answer(200, {"Content-Type": "application/octet-stream", "Docker-Content-Digest": rest}, data)


def storage_server(blobs: dict[str, bytes]) -> ScriptedServer:
    """A 'storage account' serving ``/storage/<digest>`` to anyone (signed URL, no auth needed)."""

    def handle(r: Request) -> Answer | None:
        digest = r.path.split("?", 1)[0].rsplit("/", 1)[-1]
        data = blobs.get(digest)
        return Answer(200, {"Content-Type": "application/octet-stream"}, data) if data is not None else None

    return ScriptedServer(handle)
