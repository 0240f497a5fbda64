"""Fixtures: a real `letstalk-relay` and real `letstalkd` daemons from the workspace's
debug build (or `$LETSTALK_BIN_DIR`), each in a temporary directory, on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

from letstalk import Client, ConnectionLost

PASSWORD = "correct horse battery"
ROOT = Path(__file__).resolve().parents[3]


def binary(name: str) -> str:
    base = os.environ.get("LETSTALK_BIN_DIR") or str(ROOT / "target" / "debug")
    path = Path(base) / name
    if not path.exists():
        pytest.fail(f"{path} is missing: build the workspace first (cargo build)")
    return str(path)


def eventually(what: str, check, limit: float = 30.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            value = check()
        except (ConnectionLost, OSError):
            value = None
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Relay:
    def __init__(self, root: Path) -> None:
        self.dir = root / "relay"
        self.dir.mkdir()
        self.log = open(self.dir / "relay.log", "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LETSTALK_")}
        self.proc = subprocess.Popen(
            [binary("letstalk-relay"), "--listen", "127.0.0.1:0", "--data-dir", str(self.dir)],
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL, env=env,
        )
        found: List[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").strip()
                if line.startswith("listening on "):
                    found.append(line[len("listening on "):])
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30):
            self.stop()
            raise AssertionError("letstalk-relay did not print `listening on`")
        port = found[0].rsplit(":", 1)[1]
        self.address = f"localhost:{port}"
        self.cert = str(self.dir / "relay-cert.pem")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Daemon:
    def __init__(self, root: Path, name: str, relay: Relay) -> None:
        self.name = name
        self.home = root / name
        self.home.mkdir()
        self.data_dir = self.home / "data"
        # Short: a Unix socket path has at most 107 bytes.
        self.socket = str(self.home / "s.sock")
        self.relay = relay
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("LETSTALK_", "LISTEN_", "DBUS_", "XDG_", "NOTIFY_SOCKET"))}
        env.update({
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / "config"),
            "XDG_RUNTIME_DIR": str(self.home / "runtime"),
            "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={self.home / 'no-bus'}",
            "LETSTALK_LOG": "debug",
        })
        log = open(self.home / "letstalkd.log", "ab")
        self.proc = subprocess.Popen(
            [binary("letstalkd"), "--data-dir", str(self.data_dir), "--socket", self.socket,
             "--relay", self.relay.address, "--relay-cert", self.relay.cert],
            stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL, env=env,
        )
        log.close()
        eventually(f"{self.name}'s socket", lambda: Client(self.socket).status())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def client(self, **kwargs) -> Client:
        return Client(self.socket, **kwargs)

    def register(self) -> None:
        with self.client() as c:
            eventually("the relay", lambda: c.status()["relay"]["state"] == "connected")
            c.register(self.name, f"{self.name}@example.org", f"{self.name} nick", PASSWORD)


@pytest.fixture
def world() -> Iterator[Path]:
    # /tmp rather than pytest's tmp_path: socket paths must stay short.
    root = Path(tempfile.mkdtemp(prefix="lt-py-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def relay(world: Path) -> Iterator[Relay]:
    r = Relay(world)
    yield r
    r.stop()


@pytest.fixture
def pair(world: Path, relay: Relay) -> Iterator[tuple]:
    """alice and bob, registered on one relay."""
    alice = Daemon(world, "alice", relay)
    bob = Daemon(world, "bob", relay)
    try:
        alice.register()
        bob.register()
        yield alice, bob
    finally:
        alice.stop()
        bob.stop()
