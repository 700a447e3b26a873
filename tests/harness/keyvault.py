"""A local HTTPS server that answers like Azure Key Vault's secrets API (GET secret).

It speaks the published REST API (https://learn.microsoft.com/rest/api/keyvault/secrets/get-secret):
an unauthenticated request gets the 401 Bearer challenge Key Vault sends, after which the SDK
calls the credential and retries with ``Authorization: Bearer``. The real
``azure-keyvault-secrets`` ``SecretClient`` talks to it over TLS with a certificate made here.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import ssl
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

from azure.core.credentials import AccessToken
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .servers import LoopbackHTTPServer, send_json

ACCESS_TOKEN = "kv-test-access-token"


class FakeAzureCredential:
    """A ``TokenCredential`` (what DefaultAzureCredential is) that issues a fixed token."""

    def __init__(self) -> None:
        self.calls = 0

    def get_token(self, *scopes, **kwargs) -> AccessToken:
        self.calls += 1
        return AccessToken(ACCESS_TOKEN, int(time.time()) + 3600)

    def get_token_info(self, *scopes, options=None):
        from azure.core.credentials import AccessTokenInfo

        self.calls += 1
        return AccessTokenInfo(ACCESS_TOKEN, int(time.time()) + 3600)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 (a TLS server on loopback), written into ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class KeyVaultStub:
    """``secrets`` maps names to values; change them at runtime to simulate rotation."""

    def __init__(self, secrets: dict[str, str] | None = None):
        self.secrets = dict(secrets or {})
        self.requests: list[tuple[str, str, bool]] = []  # (method, path, authorized)
        self._dir = Path(tempfile.mkdtemp(prefix="kvstub-"))
        self.cert_path, key_path = self_signed_certificate(self._dir)
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                authorized = self.headers.get("Authorization") == f"Bearer {ACCESS_TOKEN}"
                stub.requests.append(("GET", parts.path, authorized))
                if "api-version=" not in parts.query:
                    send_json(
                        self, 400, {"error": {"code": "MissingApiVersionParameter", "message": "api-version"}}
                    )
                    return
                if not authorized:
                    challenge = (
                        'Bearer authorization="https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000", '
                        'resource="https://vault.azure.net"'
                    )
                    send_json(
                        self,
                        401,
                        {"error": {"code": "Unauthorized", "message": "AKV10000"}},
                        {"WWW-Authenticate": challenge},
                    )
                    return
                segments = [s for s in parts.path.split("/") if s]
                if len(segments) < 2 or segments[0] != "secrets":
                    send_json(self, 404, {"error": {"code": "NotFound", "message": "not found"}})
                    return
                name = segments[1]
                if name not in stub.secrets:
                    send_json(
                        self,
                        404,
                        {
                            "error": {
                                "code": "SecretNotFound",
                                "message": f"A secret with (name/id) {name} was not found in this key vault.",
                            }
                        },
                    )
                    return
                now = int(time.time())
                send_json(
                    self,
                    200,
                    {
                        "value": stub.secrets[name],
                        "id": f"{stub.url}/secrets/{name}/0123456789abcdef0123456789abcdef",
                        "attributes": {
                            "enabled": True,
                            "created": now,
                            "updated": now,
                            "recoveryLevel": "Recoverable+Purgeable",
                            "recoverableDays": 90,
                        },
                        "tags": {},
                    },
                )

        self.server = LoopbackHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, key_path)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def client_kwargs(self) -> dict:
        """Extra ``SecretClient`` arguments to talk to this stub (its TLS cert; a non-Azure host)."""
        return {"connection_verify": str(self.cert_path), "verify_challenge_resource": False}

    def secret_reads(self, name: str) -> int:
        return sum(1 for m, p, ok in self.requests if ok and p.rstrip("/").split("/")[2:3] == [name])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> KeyVaultStub:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
