"""Child processes for the bench: start, wait until ready, measure RSS, and always clean up.

Every child gets its own process group and SIGKILL as its parent-death signal (SIGKILL, because
a child may be paused with SIGSTOP at that moment and would sit on a SIGTERM forever), so neither
an exception in the orchestrator nor a kill of it leaves servers behind; `Procs.close()` stops
each group it started (SIGCONT + SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """preexec_fn for every child: its own session, and SIGKILL when the orchestrator dies."""
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    started: float
    log: Path
    ready_seconds: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pause(self, paused: bool) -> None:
        """SIGSTOP / SIGCONT the process group: a paused target's timers and background tasks
        cannot steal CPU from the one being measured on a small machine."""
        if self.alive():
            _signal_group(self.pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Procs:
    logs: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    running: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdout: int | None = None,
    ) -> Proc:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env={**self.env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=stdout if stdout is not None else out,
                stderr=out,
                preexec_fn=die_with_parent,
            )
        proc = Proc(name, popen, time.monotonic(), log)
        self.running.append(proc)
        return proc

    def stop(self, proc: Proc, grace: float = 5.0) -> None:
        if proc.alive():
            _signal_group(proc.pid, signal.SIGCONT)
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.popen.wait(5)
        _signal_group(proc.pid, signal.SIGKILL)  # stragglers the leader left in its group
        if proc in self.running:
            self.running.remove(proc)

    def close(self) -> None:
        for proc in reversed(list(self.running)):
            try:
                self.stop(proc)
            except Exception as e:  # keep cleaning up the others
                print(f"bench: stopping {proc.name} failed: {e}")


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the child called setsid(): its group id is its pid
    except (ProcessLookupError, PermissionError):
        pass


def wait_ready(proc: Proc, probe: Callable[[], bool], timeout: float) -> float:
    """Poll `probe` until it succeeds; return seconds from process start to that success."""
    deadline = proc.started + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            if probe():
                proc.ready_seconds = time.monotonic() - proc.started
                return proc.ready_seconds
        except (OSError, urllib.error.URLError, ValueError):
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{proc.name} not ready after {timeout:.0f}s:\n{proc.tail()}")


def post_ok(url: str, body: bytes, headers: dict[str, str], timeout: float = 2.0) -> bool:
    """One POST; True on a 200 whose body is not an error."""
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return bool(resp.status == 200 and b'"error"' not in resp.read()[:200])


def read_ready_line(proc: Proc, timeout: float) -> str:
    """The first stdout line of a child started with stdout=PIPE (our fakes print `READY <port>`)."""
    assert proc.popen.stdout is not None
    os.set_blocking(proc.popen.stdout.fileno(), False)
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        chunk = proc.popen.stdout.read()
        if chunk:
            buf += chunk
            if b"\n" in buf:
                return buf.split(b"\n", 1)[0].decode()
        if not proc.alive():
            break
        time.sleep(0.01)
    raise RuntimeError(f"{proc.name} did not report its port:\n{proc.tail()}")


def foreign_load_generators() -> list[str]:
    """wrk processes that are not ours: someone else benchmarking this machine right now."""
    ours = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if argv and argv[0].endswith(b"wrk") and ppid != ours:
            found.append(b" ".join(argv).decode(errors="replace")[:120])
    return found


# ------------------------------------------------------------------------------------------ RSS


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _tree(pid: int) -> list[int]:
    """A process and all its living descendants."""
    tree = _children()
    todo, out = [pid], []
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process and its living descendants have used, in seconds."""
    ticks = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB (VmRSS from /proc)."""
    total_kb = 0
    for p in _tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        total_kb += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total_kb / 1024
