"""An in-memory OCI registry on a :class:`~.scripted.ScriptedServer`, and a storage host.

:class:`FakeRegistry` answers enough of the distribution API for the copy engine (manifests,
tags, blobs, uploads, the catalog), anonymously or behind Basic or Bearer auth, and lets a test
play a misbehaving registry with ``hooks``. :func:`storage_server` serves blobs at signed
``/storage/<digest>`` URLs, as the storage accounts ACR redirects blob downloads to.
Every request is recorded in ``server.requests``.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from collections.abc import Callable

from .images import Manifest, sha256_digest
from .scripted import Reply, Request, ScriptedServer

_V2 = re.compile(r"^/v2/(?P<repo>.+)/(?P<kind>manifests|blobs|tags)/(?P<rest>[^?]*)(?:\?(?P<query>.*))?$")


class FakeRegistry:
    """An in-memory OCI registry (enough for the copy engine), anonymous, Basic or Bearer.

    ``hooks``: functions ``(request) -> Reply | None`` tried first (after the auth check) to
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
        self.hooks: list[Callable[[Request], Reply | None]] = []
        self.redirect_blobs_to: str | None = None
        self.server = ScriptedServer(self.handle)
        self.url, self.host = self.server.url, self.server.host
        self._n = 0

    # -- content ---------------------------------------------------------------------------
    def push(self, repo: str, manifest: Manifest, tag: str | None = None) -> None:
        """Store a harness :class:`~.images.Manifest` (children and blobs too) under ``repo``."""
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
    def _challenge(self, r: Request) -> Reply | None:
        auth = r.headers.get("authorization", "")
        if self.basic is not None:
            expected = "Basic " + base64.b64encode(f"{self.basic[0]}:{self.basic[1]}".encode()).decode()
            if auth != expected:
                return Reply.json(
                    {"errors": [{"code": "UNAUTHORIZED"}]}, 401, {"WWW-Authenticate": 'Basic realm="fake"'}
                )
        if self.bearer is not None:
            realm, token = self.bearer
            if auth != f"Bearer {token}":
                return Reply.json(
                    {"errors": [{"code": "UNAUTHORIZED"}]},
                    401,
                    {"WWW-Authenticate": f'Bearer realm="{realm}",service="fake"'},
                )
        return None

    def handle(self, r: Request) -> Reply | None:
        denied = self._challenge(r)
        if denied is not None:
            return denied
        for hook in self.hooks:
            answer = hook(r)
            if answer is not None:
                return answer
        return self.handle_default(r)

    def handle_default(self, r: Request) -> Reply:
        """How a well-behaved registry answers ``r`` (for hooks that alter a normal answer)."""
        path = r.path.split("?", 1)[0]
        if path == "/v2/":
            return Reply.json({})
        if path == "/v2/_catalog":
            return Reply.json({"repositories": sorted(self.tags)})
        m = _V2.match(r.path)
        if not m:
            return Reply.json({"errors": [{"code": "NOT_FOUND"}]}, 404)
        repo, kind, rest, query = m["repo"], m["kind"], m["rest"], m["query"] or ""
        if kind == "tags":
            if repo not in self.tags:
                return Reply.json({"errors": [{"code": "NAME_UNKNOWN"}]}, 404)
            return Reply.json({"name": repo, "tags": list(self.tags[repo])})
        if kind == "manifests":
            if r.method in ("GET", "HEAD"):
                found = self.manifests.get((repo, rest))
                if found is None:
                    return Reply.json({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, 404)
                raw, media_type = found
                return Reply(
                    200, {"Content-Type": media_type, "Docker-Content-Digest": sha256_digest(raw)}, raw
                )
            if r.method == "PUT":
                self.manifests[(repo, rest)] = (r.body, r.headers.get("content-type", ""))
                self.manifests[(repo, sha256_digest(r.body))] = (r.body, r.headers.get("content-type", ""))
                if not rest.startswith("sha256:"):
                    self.tags.setdefault(repo, []).append(rest)
                return Reply(201, {"Docker-Content-Digest": sha256_digest(r.body)})
            return Reply(405)
        # blobs
        if rest.startswith("uploads"):
            params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
            if r.method == "POST":
                self._n += 1
                uid = f"u{self._n}"
                self.uploads[uid] = bytearray(r.body)
                return Reply(202, {"Location": f"/v2/{repo}/blobs/uploads/{uid}?state=s{self._n}"})
            uid = rest.split("/", 1)[1] if "/" in rest else ""
            if uid not in self.uploads:
                return Reply.json({"errors": [{"code": "BLOB_UPLOAD_UNKNOWN"}]}, 404)
            self.uploads[uid].extend(r.body)
            if r.method == "PATCH":
                return Reply(202, {"Location": f"/v2/{repo}/blobs/uploads/{uid}"})
            if r.method == "PUT":
                data = bytes(self.uploads.pop(uid))
                digest = urllib.parse.unquote(params.get("digest", ""))
                if sha256_digest(data) != digest:
                    return Reply.json({"errors": [{"code": "DIGEST_INVALID"}]}, 400)
                self.blobs[digest] = data
                return Reply(201, {"Docker-Content-Digest": digest})
            return Reply(405)
        data = self.blobs.get(rest)
        if data is None:
            return Reply.json({"errors": [{"code": "BLOB_UNKNOWN"}]}, 404)
        if r.method == "GET" and self.redirect_blobs_to:
            return Reply(307, {"Location": f"{self.redirect_blobs_to}/storage/{rest}?sig=signed"})
        return Reply(200, {"Content-Type": "application/octet-stream", "Docker-Content-Digest": rest}, data)


def storage_server(blobs: dict[str, bytes]) -> ScriptedServer:
    """A 'storage account' serving ``/storage/<digest>`` to anyone (signed URL, no auth needed)."""

    def handle(r: Request) -> Reply | None:
        digest = r.path.split("?", 1)[0].rsplit("/", 1)[-1]
        data = blobs.get(digest)
        return Reply(200, {"Content-Type": "application/octet-stream"}, data) if data is not None else None

    return ScriptedServer(handle)
