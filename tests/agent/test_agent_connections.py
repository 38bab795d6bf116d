"""Slow and idle clients cannot lock the real ones out of the agent: 500 connections that send half a
request and stop, against the real `scipioncloud-agent serve` on a free loopback port."""

from __future__ import annotations

import socket
import time

import pytest
import requests

from tests.conftest import agent_config_dict, start_agent, stop_agent

pytestmark = pytest.mark.integration
SLOW = 500


def test_500_slow_connections_do_not_lock_out_real_clients(tmp_path):
    agent = start_agent(tmp_path, agent_config_dict(tmp_path))
    host, port = agent.url.removeprefix("http://").split(":")
    held: list[socket.socket] = []
    try:
        for _ in range(SLOW):
            slow = socket.create_connection((host, int(port)), timeout=5)
            slow.sendall(b"GET /v1/host HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and never the rest
            held.append(slow)
        time.sleep(1)  # let the agent accept them all
        timings = []
        for path in ("/healthz", "/openapi.json", "/v1/idle"):
            started = time.monotonic()
            response = agent.get(path)  # 10 s timeout: a locked-out client would wait for channel_timeout
            timings.append(time.monotonic() - started)
            assert response.status_code == 200, (path, response.text)
        assert max(timings) < 5, timings
        # The slow connections are still open (held, not dropped to make room).
        held[0].sendall(b"1\r\nAuthorization: Bearer " + agent.token.encode() + b"\r\n\r\n")
        assert held[0].recv(12).startswith(b"HTTP/1.1 200")
    finally:
        for slow in held:
            slow.close()
        stop_agent(agent)


def test_idle_connections_are_closed_after_the_channel_timeout(tmp_path):
    config = agent_config_dict(tmp_path, server={"channel_timeout_s": 2})
    agent = start_agent(tmp_path, config)
    host, port = agent.url.removeprefix("http://").split(":")
    try:
        idle = socket.create_connection((host, int(port)), timeout=15)
        idle.sendall(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        assert idle.recv(1024) == b""  # closed by the agent
        assert time.monotonic() - started < 14
        idle.close()
        assert requests.get(agent.url + "/healthz", timeout=5).status_code == 200
    finally:
        stop_agent(agent)


def raw(agent, data: bytes) -> bytes:
    host, port = agent.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(data)
        answer = b""
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except ConnectionResetError:  # waitress closed with our bytes unread: a reset after its answer
            pass
        return answer


def test_waitress_own_errors_are_what_the_api_document_says(agent_process):
    """Requests waitress refuses before the app sees them: the status and text/plain body of
    docs/agent-api.md, never a hang or a traceback."""
    bad_line = raw(agent_process, b"NOT A REQUEST LINE\r\n\r\n")
    assert bad_line.startswith(b"HTTP/1.0 400") and b"text/plain" in bad_line
    huge = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    assert raw(agent_process, huge).split(b" ", 2)[1] == b"431"
    # Refused on the Content-Length alone: waitress never buffers the body (its default allows 1 GiB).
    big = raw(
        agent_process,
        b"POST /v1/volumes/x/prewarm HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000000\r\n\r\n",
    )
    assert big.split(b" ", 2)[1] == b"413", big[:200]
