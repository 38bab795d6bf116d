"""A loopback HTTP proxy between boto3 and an S3 endpoint on 127.0.0.1, for what the endpoint itself never
does: a test gives `refuse` (answer a request itself, before it reaches the endpoint) and/or `alter` (change
an answer's body). Everything else passes through unchanged: headers, HEAD answers, listings."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from agent.s3 import checksums as sums

# refuse(method, path, headers, body) -> (status, XML body) to answer in the endpoint's place, or None
Refuse = Callable[[str, str, dict, bytes], "tuple[int, bytes] | None"]
# alter(method, path, status, body) -> the body to send on
Alter = Callable[[str, str, int, bytes], bytes]


def s3_error(code: str, message: str) -> bytes:
    """An S3 error document (S3 API reference, "Error responses")."""
    document = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + document).encode()


class S3Proxy:
    def __init__(self, upstream: str, *, refuse: Refuse | None = None, alter: Alter | None = None) -> None:
        target = urlsplit(upstream)
        self.requests: list[tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status)
                skip = {"content-length", "transfer-encoding", "connection", "date", "server"}
                for name, value in headers:
                    if name.lower() not in skip:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = dict(self.headers.items())
                proxy.requests.append((self.command, self.path))
                refused = refuse(self.command, self.path, headers, body) if refuse else None
                if refused is not None:
                    status, data = refused
                    self.answer(status, [("Content-Type", "application/xml")], data)
                    return
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                reply = upstream.getresponse()
                data = reply.read()
                upstream.close()
                if alter is not None:
                    data = alter(self.command, self.path, reply.status, data)
                headers_out = reply.getheaders()
                if self.command == "HEAD":  # no body: keep the object's own length
                    self.send_response(reply.status)
                    for name, value in headers_out:
                        if name.lower() not in {"transfer-encoding", "connection", "date", "server"}:
                            self.send_header(name, value)
                    self.end_headers()
                    return
                self.answer(reply.status, headers_out, data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # a free port, never a fixed one
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def checking_proxy(upstream: str) -> S3Proxy:
    """Stand-in for Amazon S3's check of an upload (S3 user guide, "Checking object integrity": S3 computes
    the checksum itself and refuses a mismatch with 400 BadDigest) in front of moto, which does not check:
    a PUT whose body's CRC64NVME differs from its x-amz-checksum-crc64nvme header is refused."""

    def refuse(method: str, path: str, headers: dict, body: bytes):
        sent = {k.lower(): v for k, v in headers.items()}.get("x-amz-checksum-crc64nvme")
        if method == "PUT" and sent and sent != sums.b64(sums.part_digest(body)):
            return 400, s3_error(
                "BadDigest", "The CRC64NVME you specified did not match the calculated checksum."
            )
        return None

    return S3Proxy(upstream, refuse=refuse)
