"""``saga serve --workers N``: N node processes behind one listening socket.

Python runs one core per process, so a machine's cores serve more requests as more processes.
Each worker is a whole cluster node (engine + API) with its own node id; they share the
PostgreSQL database through instance leases, and the socket the supervisor opened (the kernel
hands each connection to one of them). The supervisor forwards SIGTERM/SIGINT, gives the
workers their grace period, and starts a worker again under the same node id if it dies, so
its leases come back at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from saga_orchestrator.errors import ConfigurationError
from saga_orchestrator.settings import Settings

log = logging.getLogger("saga_orchestrator.serve")

LISTEN_FD_ENV = "LISTEN_FD"
RESTART_DELAY = 1.0
"""Seconds before a worker that died is started again (a crash loop stays slow)."""


def check_workers(settings: Settings, workers: int) -> None:
    if workers <= 1:
        return
    if not settings.cluster_enabled:
        raise ConfigurationError(
            f"--workers {workers} runs {workers} cluster nodes: set CLUSTER_ENABLED=true with a "
            "PostgreSQL DATABASE_URL (an embedded SQLite file serves one process)"
        )
    if not settings.auth_configured():
        raise ConfigurationError(
            "--workers needs a configured JWT key (JWT_SECRET, JWT_PUBLIC_KEY_FILE, JWT_JWKS_FILE "
            "or JWT_JWKS_URL) so that every worker accepts the same tokens"
        )


@dataclass(slots=True)
class Supervisor:
    settings: Settings
    host: str
    port: int
    workers: int
    worker_args: Sequence[str]
    """``saga serve`` arguments each worker gets (handlers, grace)."""
    grace: float
    node_id_base: str
    _children: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    _stopping: bool = False

    def run(self) -> int:
        try:
            listener = socket.create_server(
                (self.host, self.port),
                family=socket.AF_INET6 if ":" in self.host else socket.AF_INET,
                backlog=2048,
            )
        except OSError as error:
            raise ConfigurationError(f"cannot listen on {self.host}:{self.port}: {error}") from None
        listener.set_inheritable(True)
        previous = {
            signum: signal.signal(signum, self._ask_to_stop)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for index in range(self.workers):
                self._spawn(index, listener.fileno())
            log.info("serving on %s:%d with %d workers", self.host, self.port, self.workers)
            return self._watch(listener.fileno())
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            listener.close()

    def _spawn(self, index: int, fd: int) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": self.settings.database_url,
            "NODE_ID": f"{self.node_id_base}-w{index}",
            LISTEN_FD_ENV: str(fd),
        }
        command = [
            sys.executable,
            "-m",
            "saga_orchestrator.cli",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            *self.worker_args,
        ]
        self._children[index] = subprocess.Popen(command, env=env, pass_fds=(fd,))

    def _watch(self, fd: int) -> int:
        while not self._stopping:
            for index, child in list(self._children.items()):
                code = child.poll()
                if code is not None and not self._stopping:
                    log.error("worker %d exited with %s: starting it again", index, code)
                    time.sleep(RESTART_DELAY)
                    if not self._stopping:
                        self._spawn(index, fd)
            time.sleep(0.2)
        return self._stop_all()

    def _ask_to_stop(self, _signum: int, _frame: object) -> None:
        self._stopping = True

    def _stop_all(self) -> int:
        for child in self._children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace + 15.0
        codes = []
        for child in self._children.values():
            try:
                codes.append(child.wait(timeout=max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in time: killing it", child.pid)
                child.kill()
                codes.append(child.wait())
        return 0 if all(code == 0 for code in codes) else 1


def inherited_socket() -> socket.socket | None:
    """The listening socket a supervisor passed to this worker, if any (a private protocol
    between the two processes, not a setting: hence read here, not in Settings)."""
    value = os.environ.get(LISTEN_FD_ENV)
    if value is None:
        return None
    try:
        return socket.socket(fileno=int(value))
    except (ValueError, OSError) as error:
        raise ConfigurationError(f"{LISTEN_FD_ENV}={value!r} is not an open socket") from error
