"""A front in front of a real ``docker-registry`` that refuses what Docker Hub or Alibaba ACR refuse.

    with RegistryFront(registry, refuse_mounts=True, immutable_tags=True) as hub:   # Docker Hub-like
        ...sync to hub.url...

Every request is passed on to the registry (with the client's ``Host``, so the registry's own
``Location`` headers point back at the front) unless a rule answers first, with the status and
error body the real registry documents or is reported to send:

``refuse_mounts``
    Docker Hub without pull rights on the other repository: a cross-repository mount
    (``POST .../blobs/uploads/?mount=...&from=...``) is answered ``401 UNAUTHORIZED``
    ``{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`` with a Bearer
    challenge naming the insufficient scope (it is not a 202 fresh upload).
``immutable_tags``
    Docker Hub immutable tags: a manifest PUT that would move an existing tag to another digest
    is answered ``403 DENIED`` "requested access to the resource is denied - This tag is already
    assigned to an image in this repository and cannot be updated due to immutability settings.
    To push this image, use a different tag." (the same digest is accepted).
``deny_tag_writes``
    A push credential that lost its write rights (Docker Hub, Alibaba, GHCR, Quay): every manifest
    PUT by tag is answered ``403 DENIED`` "requested access to the resource is denied", with no
    word about immutability.
``manifest_classes``
    Alibaba ACR personal edition: an image manifest whose config media type is not in this set, or
    that carries in-toto attestation layers, is answered ``403 DENIED`` "unknown manifest class for
    <type>" (distribution's resource-policy check, which is what Alibaba's answer quotes).

``rate_limit``
    Docker Hub's pull limit: ``(limit, remaining, window seconds)`` sent on every manifest GET and
    HEAD answer as ``ratelimit-limit: <limit>;w=<window>`` and ``ratelimit-remaining:
    <remaining>;w=<window>`` (https://docs.docker.com/docker-hub/usage/pulls/); nothing is counted.

``subject_header``
    Amazon ECR as reported: a manifest PUT carrying a ``subject`` is answered with
    ``OCI-Subject: <subject digest>`` although the referrers API is not served (404 as from the
    registry behind): the header alone does not say the API is there.

``refused`` counts the refusals by rule; ``requests`` (of the underlying :class:`ScriptedServer`)
records everything.
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import json
import threading
import urllib.parse

from .images import ACCEPT, DOCKER_CONFIG, HELM_CONFIG, IN_TOTO, OCI_CONFIG
from .registry import Registry
from .scripted import Reply, Request, ScriptedServer

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}
IMAGE_CLASSES = frozenset({DOCKER_CONFIG, OCI_CONFIG, HELM_CONFIG})
IMMUTABLE_MESSAGE = (
    "requested access to the resource is denied - This tag is already assigned to an image in this "
    "repository and cannot be updated due to immutability settings. To push this image, use a different tag."
)


def forward(upstream_host: str, request: Request) -> Reply:
    """Pass one request on to the upstream registry (keeping the client's Host, so that the
    registry's absolute Locations point back at the front) and buffer its answer."""
    conn = http.client.HTTPConnection(upstream_host, timeout=30)
    try:
        headers = {k: v for k, v in request.headers.items() if k not in _HOP}
        body = request.body if request.method in ("POST", "PUT", "PATCH") else None
        conn.request(request.method, request.path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        out = {k: v for k, v in response.getheaders() if k.lower() not in _HOP}
        return Reply(response.status, out, data)
    finally:
        conn.close()


def _subject(body: bytes) -> str | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    subject = document.get("subject") if isinstance(document, dict) else None
    digest = subject.get("digest") if isinstance(subject, dict) else None
    return digest if isinstance(digest, str) else None


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply.json({"errors": [{"code": code, "message": message}]}, status, headers)


class RegistryFront:
    def __init__(
        self,
        registry: Registry,
        *,
        refuse_mounts: bool = False,
        immutable_tags: bool = False,
        deny_tag_writes: bool = False,
        manifest_classes: frozenset[str] | None = None,
        rate_limit: tuple[int, int, int] | None = None,
        subject_header: bool = False,
    ):
        self.registry = registry
        self.refuse_mounts = refuse_mounts
        self.immutable_tags = immutable_tags
        self.deny_tag_writes = deny_tag_writes
        self.manifest_classes = manifest_classes
        self.rate_limit = rate_limit
        self.subject_header = subject_header
        self.refused: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self.server = ScriptedServer(self._handle)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def host(self) -> str:
        return self.server.host

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> RegistryFront:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _refuse(self, rule: str, reply: Reply) -> Reply:
        with self._lock:
            self.refused[rule] += 1
        return reply

    def _handle(self, request: Request) -> Reply:
        parts = urllib.parse.urlsplit(request.path)
        path, query = parts.path, urllib.parse.parse_qs(parts.query)
        if self.refuse_mounts and request.method == "POST" and "/blobs/uploads/" in path and "mount" in query:
            repo = path[len("/v2/") : path.index("/blobs/uploads/")]
            challenge = (
                f'Bearer realm="{self.registry.token_issuer.realm}",service="{self.registry.token_issuer.service}",'
                f'scope="repository:{repo}:pull,push repository:{query.get("from", [""])[0]}:pull",'
                'error="insufficient_scope"'
            )
            return self._refuse(
                "mount",
                _error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": challenge}),
            )
        if request.method == "PUT" and "/manifests/" in path:
            repo, _, reference = path[len("/v2/") :].partition("/manifests/")
            refusal = self._manifest_refusal(request, repo, reference)
            if refusal is not None:
                return refusal
        reply = forward(self.registry.host, request)
        if self.subject_header and request.method == "PUT" and "/manifests/" in path and reply.status == 201:
            subject = _subject(request.body)
            if subject:
                reply.headers["OCI-Subject"] = subject
        if self.rate_limit is not None and request.method in ("GET", "HEAD") and "/manifests/" in path:
            limit, remaining, window = self.rate_limit
            reply.headers["ratelimit-limit"] = f"{limit};w={window}"
            reply.headers["ratelimit-remaining"] = f"{remaining};w={window}"
        return reply

    def _manifest_refusal(self, request: Request, repo: str, reference: str) -> Reply | None:
        try:
            document = json.loads(request.body)
        except ValueError:
            return None
        if self.manifest_classes is not None and isinstance(document.get("config"), dict):
            config = document["config"].get("mediaType")
            layers = [
                layer.get("mediaType") for layer in document.get("layers") or [] if isinstance(layer, dict)
            ]
            refused = (
                config if config not in self.manifest_classes else (IN_TOTO if IN_TOTO in layers else None)
            )
            if refused:
                return self._refuse("class", _error(403, "DENIED", f"unknown manifest class for {refused}"))
        if self.deny_tag_writes and not reference.startswith("sha256:"):
            return self._refuse("denied", _error(403, "DENIED", "requested access to the resource is denied"))
        if self.immutable_tags and not reference.startswith("sha256:"):
            headers = {k: v for k, v in request.headers.items() if k in ("authorization", "host")}
            head = forward(
                self.registry.host,
                Request("HEAD", f"/v2/{repo}/manifests/{reference}", {**headers, "accept": ACCEPT}, b""),
            )
            held = head.headers.get("Docker-Content-Digest")
            digest = "sha256:" + hashlib.sha256(request.body).hexdigest()
            if head.status == 200 and held and held != digest:
                return self._refuse("immutable", _error(403, "DENIED", IMMUTABLE_MESSAGE))
        return None
