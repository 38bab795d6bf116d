"""FakeImdsV2Server: an AWS stand-in for the EC2 instance metadata service (IMDSv2) on 127.0.0.1.

Like the real one it answers only with a session token: `PUT /latest/api/token` with the TTL header gives a
token, and every GET without that token gets 401. It serves the instance identity document, the user data
and the meta-data items given (`meta`, changeable while it runs: a stopped and started instance's new IP).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

IDENTITY = {
    "accountId": "123456789012",
    "architecture": "x86_64",
    "availabilityZone": "eu-west-1b",
    "imageId": "ami-0abcdef1234567890",
    "instanceId": "i-0123456789abcdef0",
    "instanceType": "g5.xlarge",
    "privateIp": "10.0.1.23",
    "region": "eu-west-1",
    "version": "2017-09-30",
}


class FakeImdsV2Server:
    def __init__(
        self, identity: dict | None = None, user_data: bytes | None = None, meta: dict[str, str] | None = None
    ) -> None:
        self.identity = identity or IDENTITY
        self.user_data = user_data  # None: the instance has none, and IMDS answers 404 as AWS does
        self.meta = meta if meta is not None else {}  # /latest/meta-data/<key>; a missing key answers 404
        self.tokens: set[str] = set()
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
                server.requests.append((self.command, self.path, status))
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self):
                if self.path != "/latest/api/token":
                    return self._reply(404, b"not found")
                if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "").isdigit():
                    return self._reply(400, b"missing X-aws-ec2-metadata-token-ttl-seconds")
                token = secrets.token_urlsafe(24)
                server.tokens.add(token)
                return self._reply(200, token.encode())

            def do_GET(self):
                if self.headers.get("X-aws-ec2-metadata-token") not in server.tokens:
                    return self._reply(401, b"Unauthorized")
                if self.path == "/latest/dynamic/instance-identity/document":
                    return self._reply(200, json.dumps(server.identity).encode(), "application/json")
                if self.path == "/latest/user-data" and server.user_data is not None:
                    return self._reply(200, server.user_data)
                key = self.path.removeprefix("/latest/meta-data/")
                if key != self.path and key in server.meta:
                    return self._reply(200, server.meta[key].encode())
                return self._reply(404, b"not found")

            def log_message(self, *args):  # keep test output quiet
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeImdsV2Server:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


@contextlib.contextmanager
def answering_after(server: FakeImdsV2Server, seconds: float) -> Iterator[FakeImdsV2Server]:
    """The stand-in's port listens at once but nobody answers for `seconds`: the network of an instance
    that comes up after the first-boot program started. Stopped on the way out."""
    late = threading.Timer(seconds, server.__enter__)
    late.start()
    try:
        yield server
    finally:
        late.join()
        server.__exit__(None, None, None)


class SilentServer:
    """A port that accepts connections and never answers: an unreachable IMDS that would block a caller."""

    def __init__(self) -> None:

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc) -> None:
        self._sock.close()
