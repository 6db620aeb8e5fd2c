"""A local HTTPS server standing in for the Kubernetes API server: it records every PATCH
(path, headers, JSON body) and answers 200, or the status set for a path. Not a real API
server: the request shape it checks is the one of the Kubernetes API reference for
`PATCH /apis/apps/v1/namespaces/NS/{statefulsets,deployments}/NAME/scale` (merge patch)."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.deploy.manifests import require_tool
from tidal.config import ENV


@dataclass
class FakeApi:
    # The environment a pod would have: API server address and where its service account is.
    env: dict[str, str]
    service_account: Path
    requests: list[dict] = field(default_factory=list)
    # path -> HTTP status to answer with (default 200).
    answers: dict[str, int] = field(default_factory=dict)

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]


def self_signed(tmp: Path, name: str) -> tuple[Path, Path]:
    openssl = require_tool("openssl")
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=kubernetes",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@contextmanager
def fake_k8s_api(tmp: Path, namespace: str = "tidal") -> Iterator[FakeApi]:
    cert, key = self_signed(tmp, "apiserver")
    sa = tmp / "serviceaccount"
    sa.mkdir()
    (sa / "namespace").write_text(namespace + "\n")
    (sa / "token").write_text("token-1\n")
    (sa / "ca.crt").write_bytes(cert.read_bytes())
    api = FakeApi({}, sa)

    class Handler(BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            api.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
            status = api.answers.get(self.path, 200)
            reply = {"kind": "Scale", "spec": {"replicas": 0}} if status == 200 else {"kind": "Status"}
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(reply).encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api.env.update(
        {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(server.server_address[1]),
            ENV["k8s_service_account_dir"]: str(sa),
        }
    )
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
