"""Start a server in its own process group, remember it in a pid file, stop it by group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil


class PlatformError(RuntimeError):
    """Something the user can fix; the message names the setting or the log to read."""


@dataclass(frozen=True)
class Component:
    """One server of the platform: how to start it and how to tell it is healthy."""

    name: str  # file-name safe: logs/<name>.log, run/<name>.pid
    title: str
    argv: tuple[str, ...]
    url: str  # what a user opens
    health_url: str
    port: int
    port_setting: str  # the variable to change when the port is taken
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    start_timeout_s: float = 120.0
    extra_ports: tuple[tuple[int, str], ...] = ()  # other ports it binds, with their variable
    healthy: Callable[[httpx.Response], bool] | None = None
    # For a server without an HTTP endpoint (a Celery worker): replaces the health request.
    check: Callable[[], bool] | None = None


@dataclass(frozen=True)
class PidRecord:
    """What a pid file holds: the group leader's pid and when it started (guards pid reuse).

    `started` is seconds after boot: psutil's create_time adds the boot time, which moves when the
    wall clock is stepped (NTP, a resumed VM), and a step of a second made every component of a
    running platform look stale, so `down` left them all running. Pid files written before this
    have two fields and a wall-clock time (`legacy`), still compared as before.
    """

    pid: int
    started: float
    legacy: bool = False

    def matches(self, leader: psutil.Process) -> bool:
        if self.legacy:
            return abs(leader.create_time() - self.started) < 1.0
        return abs(seconds_after_boot(leader) - self.started) < 1.0


def seconds_after_boot(process: psutil.Process) -> float:
    """When the process started, counted from boot: unaffected by wall-clock steps on Linux."""
    try:  # the kernel's start time in clock ticks (field 22 of /proc/<pid>/stat)
        stat = Path(f"/proc/{process.pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):  # no procfs: the best the platform offers
        return process.create_time() - psutil.boot_time()


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something listens on the port (binding is the only race-free question)."""
    with socket.socket() as sock:
        # SO_REUSEADDR as servers set it: sockets in TIME_WAIT must not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def probe(component: Component, timeout_s: float = 3.0) -> bool:
    """One health request (or the component's own check); True only for a healthy answer."""
    if component.check is not None:
        return component.check()
    try:
        response = httpx.get(component.health_url, timeout=timeout_s)
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    return component.healthy(response) if component.healthy else True


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def renice(pgid: int, level: int, only: tuple[str, ...] = ()) -> list[int]:
    """Raise the nice level of a group's processes (those whose command line contains one of `only`,
    when given); returns their pids. Lowering it back needs privileges, so this only ever raises."""
    done = []
    for proc in group_members(pgid):
        try:
            cmdline = " ".join(proc.cmdline())
            if (only and not any(word in cmdline for word in only)) or proc.nice() >= level:
                continue
            proc.nice(level)
            done.append(proc.pid)
        except psutil.Error:
            continue
    return done


def _reap(pid: int) -> None:
    # Only a child of this process can be reaped; elsewhere init does it.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


class ProcessManager:
    """Pid files under <home>/run, logs under <home>/logs; one process group per component."""

    def __init__(self, home: Path):
        self.home = Path(home)
        self.run_dir = self.home / "run"
        self.log_dir = self.home / "logs"

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def pid_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def record(self, name: str) -> PidRecord | None:
        """The pid file's content, or None when missing or unreadable."""
        try:
            fields = self.pid_path(name).read_text().split()
            return PidRecord(int(fields[0]), float(fields[1]), legacy=fields[2:3] != ["after-boot"])
        except (OSError, ValueError, IndexError):
            return None

    def running_pgid(self, name: str) -> int | None:
        """The component's process group if any process of it is alive; forgets stale pid files."""
        rec = self.record(name)
        if rec is None:
            return None
        _reap(rec.pid)
        try:
            leader = psutil.Process(rec.pid)
            ours = rec.matches(leader) and leader.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            # The leader is gone; a pgid is never reused while members remain, so members are ours.
            ours = True
        if ours and group_members(rec.pid):
            return rec.pid
        self.pid_path(name).unlink(missing_ok=True)
        return None

    @staticmethod
    def check_ports(component: Component) -> None:
        """Raise, naming the variable to change, when a port the component binds is taken."""
        for port, setting in ((component.port, component.port_setting), *component.extra_ports):
            if port_in_use(port):
                raise PlatformError(
                    f"{component.title} cannot start: port {port} on 127.0.0.1 is already in use "
                    f"by another program; set {setting} to a free port"
                )

    def start(self, component: Component) -> int:
        """Start the component in a new session; return its pid (= its process group id)."""
        self.check_ports(component)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(component.name), "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(component.argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(component.argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=component.env or None, cwd=component.cwd, start_new_session=True,
            )
        started = seconds_after_boot(psutil.Process(proc.pid))
        self.pid_path(component.name).write_text(f"{proc.pid}\n{started}\nafter-boot\n")
        return proc.pid

    def wait_healthy(self, component: Component, timeout_s: float | None = None) -> float:
        """Block until the health endpoint answers; return seconds waited or raise with the log tail."""
        timeout_s = timeout_s or component.start_timeout_s
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if probe(component):
                return time.monotonic() - started
            if self.running_pgid(component.name) is None:
                raise PlatformError(self._failure(component, "exited during start-up"))
            time.sleep(0.5)
        raise PlatformError(self._failure(component, f"did not answer {component.health_url} within {timeout_s:.0f} s"))

    def _failure(self, component: Component, what: str) -> str:
        log = self.log_path(component.name)
        return f"{component.title} {what}; its log is {log}. Last lines:\n{self.tail(component.name)}"

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def stop(self, name: str, timeout_s: float = 20.0) -> bool:
        """SIGTERM the component's group, SIGKILL after the timeout; True when something was stopped."""
        pgid = self.running_pgid(name)
        if pgid is None:
            self.pid_path(name).unlink(missing_ok=True)
            return False
        self._signal(pgid, signal.SIGTERM)
        if not self._wait_gone(pgid, timeout_s):
            self._signal(pgid, signal.SIGKILL)
            self._wait_gone(pgid, 10.0)
        self.pid_path(name).unlink(missing_ok=True)
        return True

    @staticmethod
    def _signal(pgid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)

    @staticmethod
    def _wait_gone(pgid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            _reap(pgid)
            if not group_members(pgid):
                return True
            time.sleep(0.2)
        return False
