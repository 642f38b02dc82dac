"""Issue 12: at the fd limit the gateway sheds instead of locking everyone
out.  A real `busbar serve` in a subprocess with RLIMIT_NOFILE lowered: idle
keep-alives make room for newcomers, connections that hold fds without
sending get newcomers answered 503 (on a reserved fd) instead of a hang,
the accept loop logs one line instead of one per retry, and it recovers."""
from __future__ import annotations

import resource
import signal
import socket
import subprocess
import sys

import pytest

from harness import free_port, wait_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FD_LIMIT = 64
CONFIG = """
server: {max_client_connections: 10000, header_timeout: 30}
providers:
  a: {protocol: openai, base_url: "http://127.0.0.1:9/v1", key: k}
pools:
  p: {members: [{provider: a, model: m}]}
admin: {listen: "127.0.0.1:0", usage_db: "off"}
"""
HEALTH = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"


def _lower_fd_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def _answer(sock: socket.socket) -> bytes:
    """One answer's bytes (a /healthz body ends with `}`), or what came before EOF."""
    out = b""
    while not out.endswith(b"}"):
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        out += data
    return out


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)      # a hang fails the test instead of stalling it
    return sock


def test_out_of_fds_idle_keepalives_make_room_then_newcomers_are_shed_with_one_log_line(tmp_path):
    path = tmp_path / "busbar.yaml"
    path.write_text(CONFIG)
    port = free_port()
    serve = subprocess.Popen([sys.executable, "-m", "busbar.cli", "serve", "--config", str(path), "--port", str(port)],
                             stderr=subprocess.PIPE, text=True, cwd=tmp_path, preexec_fn=_lower_fd_limit)
    opened: list[socket.socket] = []
    try:
        wait_port(port)
        # 1. every connection served once and left idle: past the fd limit the
        #    oldest idle keep-alives are closed, so every newcomer is served
        for _ in range(FD_LIMIT + 16):
            sock = _connect(port)
            sock.sendall(HEALTH)
            assert _answer(sock).startswith(b"HTTP/1.1 200")
            opened.append(sock)
        closed_by_gateway = 0
        for sock in opened[:16]:
            sock.settimeout(2)
            try:
                closed_by_gateway += sock.recv(1) == b""
            except (ConnectionResetError, socket.timeout):
                pass
        assert closed_by_gateway >= 8, "the oldest idle keep-alives should have been closed to make room"
        for sock in opened:
            sock.close()
        opened.clear()

        # 2. connections that hold an fd without sending (nothing idle to close):
        #    newcomers past the limit get a 503 and a close, not a hang
        answers = []
        for _ in range(FD_LIMIT + 16):
            sock = _connect(port)
            opened.append(sock)
        for sock in opened[-16:]:
            sock.sendall(HEALTH)
            answers.append(_answer(sock))
        shed = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        assert shed, answers
        assert all(b"retry-after: 1" in a.lower() for a in shed)
        for sock in opened:
            sock.close()
        opened.clear()

        # 3. fds free again: served
        sock = _connect(port)
        sock.sendall(HEALTH)
        assert _answer(sock).startswith(b"HTTP/1.1 200")
        sock.close()
    finally:
        for sock in opened:
            sock.close()
        serve.send_signal(signal.SIGTERM)
        try:
            _, stderr = serve.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
            _, stderr = serve.communicate()
    fd_lines = [line for line in stderr.splitlines() if "EMFILE" in line or "file descriptors" in line]
    assert len(fd_lines) == 1, stderr[-3000:]
    assert "out of file descriptors (EMFILE" in fd_lines[0]
    assert "accept returned" not in stderr       # trio's one-line-per-retry log is gone
    assert "Traceback" not in stderr, stderr[-3000:]
