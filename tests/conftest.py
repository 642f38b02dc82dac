import os
import sys

# Tests import the package from the checkout (CI installs it editable too).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import socket
import subprocess

import pytest

RINGS = ("pure", "integration", "sdk")


def pytest_collection_modifyitems(config, items):
    """Every test belongs to exactly one ring (pyproject.toml lists them)."""
    wrong = []
    for item in items:
        rings = {m.name for m in item.iter_markers() if m.name in RINGS}
        if len(rings) != 1:
            wrong.append(f"{item.nodeid}: {', '.join(sorted(rings)) or 'no ring'}")
    if wrong:
        raise pytest.UsageError("each test needs exactly one ring marker (pure, integration, sdk):\n  "
                                + "\n  ".join(wrong))


@pytest.fixture(autouse=True)
def _pure_means_no_sockets(request, monkeypatch):
    """A `pure` test that opens a network socket or starts a process is in the wrong ring."""
    if request.node.get_closest_marker("pure") is None:
        return

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} is marked pure but opened a network socket; "
                             "mark it integration (or sdk)")
    real_bind = socket.socket.bind

    def bind(self, *args, **kwargs):
        if self.family == socket.AF_UNIX:
            return real_bind(self, *args, **kwargs)
        refuse(self)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket.socket, "bind", bind)

    def no_process(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} is marked pure but started a process; mark it integration")
    monkeypatch.setattr(subprocess.Popen, "_execute_child", no_process)
    monkeypatch.setattr(os, "fork", no_process)
    monkeypatch.setattr(os, "posix_spawn", no_process)
    monkeypatch.setattr(os, "system", no_process)
