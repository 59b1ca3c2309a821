"""The local multi-process stack (`dicomgw stack up|down`, `make up|down`).

Two MinIO servers (primary and replica), Redis, PostgreSQL, the ingest, query and retrieve services,
the Celery worker, beat and outbox relay, and nginx routing by method and path in front — all real
processes on this machine, the same shape as the Kubernetes deployment. Tests start their own stack on
free ports with the same code.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
TEMPLATE = Path(__file__).with_name("nginx.conf.template")


def _repo_tools() -> Path:
    if "DICOMGW_TOOLS" in os.environ:
        return Path(os.environ["DICOMGW_TOOLS"])
    return Path.cwd() / ".tools"


@dataclass
class StackConfig:
    run_dir: Path = Path("var/stack")
    host: str = "127.0.0.1"
    port: int = 8080
    minio_port: int = 9000
    replica_port: int = 9100
    redis_port: int = 6379
    postgres_port: int = 5432
    ingest_port: int = 8081
    query_port: int = 8082
    retrieve_port: int = 8083
    worker_metrics_port: int = 9808
    dimse_port: int = 11112
    minio_user: str = field(default_factory=lambda: os.environ.get("MINIO_ROOT_USER", "minioadmin"))
    minio_password: str = field(
        default_factory=lambda: os.environ.get("MINIO_ROOT_PASSWORD", "minioadmin"))
    base_path: str = "/dicom-web"
    # more DICOMGW_* settings for every dicomgw process (tests shorten the sweep cycles)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.base_path}"

    def key_secret(self) -> str:
        """The stack's API key hashing secret, made on first use and kept in run_dir (mode 0600)."""
        path = self.run_dir / "key-secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32))
        return path.read_text().strip()

    @classmethod
    def running(cls, run_dir: Path = Path("var/stack")) -> StackConfig | None:
        """The configuration of the stack `make up` started from this folder, if it is running."""
        state_file = run_dir / "pids.json"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            return None
        if not any(_alive(pid) for pid in state.get("pids", {}).values()):
            return None
        saved = state["config"]
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, object] = {}
        for name, value in saved.items():
            kind = types.get(name)
            if kind is None or name == "extra_env":
                continue
            values[name] = int(value) if kind in (int, "int") else Path(value) if kind in (
                Path, "Path") else value
        values["extra_env"] = state.get("extra_env", {})
        return cls(**values)  # type: ignore[arg-type]

    def service_env(self) -> dict[str, str]:
        """The settings every dicomgw process of the stack runs with."""
        s3 = {"ENDPOINT_URL": f"http://127.0.0.1:{self.minio_port}", "BUCKET": "dicom-originals"}
        replica = {"ENDPOINT_URL": f"http://127.0.0.1:{self.replica_port}", "BUCKET": "dicom-replica"}
        env = {
            "DATA_DIR": str(self.run_dir / "data"),
            "DICOMGW_INDEX_URL": f"postgresql+asyncpg://dicomgw@127.0.0.1:{self.postgres_port}/dicomgw",
            "DICOMGW_INDEX_MIGRATE": "false",
            "DICOMGW_WORKER_BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "DICOMGW_HTTP_BASE_PATH": self.base_path,
            "DICOMGW_WORKER_METRICS_PORT": str(self.worker_metrics_port),
            # the stack is a deployment: credentials required, API keys hashed with its own secret
            "DICOMGW_AUTH_MODE": "required",
            "DICOMGW_AUTH_KEY_SECRET": self.key_secret(),
        }
        for prefix, values in (("DICOMGW_STORAGE_", s3), ("DICOMGW_REPLICA_", replica)):
            env[prefix + "BACKEND"] = "s3"
            env[prefix + "ACCESS_KEY"] = self.minio_user
            env[prefix + "SECRET_KEY"] = self.minio_password
            for key, value in values.items():
                env[prefix + key] = value
        env.update(self.extra_env)
        return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check, what: str, proc: subprocess.Popen[bytes] | None, log: Path, seconds: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited early; see {log}:\n{_tail(log)}")
        try:
            if check():
                return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready; see {log}:\n{_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    except OSError:
        return ""


def _http_ok(url: str) -> bool:
    return httpx.get(url, timeout=1).status_code == 200


class Stack:
    """Start and stop the stack's processes; their pids are kept in run_dir/pids.json."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.run_dir = config.run_dir.resolve()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- processes -------------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None,
               owner: str | None = None) -> subprocess.Popen[bytes]:
        log = self.run_dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        prefix = ["runuser", "-u", owner, "--"] if owner else []
        proc = subprocess.Popen([*prefix, *args], env={**os.environ, **(env or {})},
                                stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        self._save()
        return proc

    def _save(self) -> None:
        state = {"config": {k: str(v) for k, v in asdict(self.config).items()},
                 "extra_env": self.config.extra_env,
                 "pids": {name: p.pid for name, p in self.procs.items()}}
        (self.run_dir / "pids.json").write_text(json.dumps(state, indent=1))

    def log(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"

    def start_minio(self, name: str, port: int) -> None:
        binary = _repo_tools() / "bin" / "minio"
        if not binary.exists():
            raise RuntimeError("MinIO is not built: run `make tools-minio`")
        data = self.run_dir / name
        data.mkdir(parents=True, exist_ok=True)
        env = {"MINIO_ROOT_USER": self.config.minio_user,
               "MINIO_ROOT_PASSWORD": self.config.minio_password,
               "MINIO_BROWSER": "off", "MINIO_UPDATE": "off"}
        proc = self._spawn(name, [str(binary), "server", str(data), "--address",
                                  f"127.0.0.1:{port}", "--console-address",
                                  f"127.0.0.1:{free_port()}", "--quiet"], env)
        _wait(lambda: _http_ok(f"http://127.0.0.1:{port}/minio/health/live"), name, proc, self.log(name))

    def start_redis(self) -> None:
        data = self.run_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        port = self.config.redis_port
        proc = self._spawn("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                     "--dir", str(data), "--appendonly", "yes", "--save", ""])

        def ping() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        _wait(ping, "redis", proc, self.log("redis"))

    def start_postgres(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise RuntimeError("PostgreSQL is not installed: run `make tools-postgres`")
        bin_dir = Path(found[-1]).parent
        data = self.run_dir / "postgres"
        owner = "postgres" if os.geteuid() == 0 else None
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            if owner:
                pw = pwd.getpwnam(owner)
                os.chown(data, pw.pw_uid, pw.pw_gid)
                os.chmod(data, 0o700)
                allow_traversal(data)
            prefix = ["runuser", "-u", owner, "--"] if owner else []
            subprocess.run([*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "dicomgw",
                            "--auth=trust", "-E", "UTF8", "--locale=C"], check=True, capture_output=True)
        port = self.config.postgres_port
        sockets = data  # unix socket next to the data, never in a shared folder
        proc = self._spawn("postgres", [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
                                        "-h", "127.0.0.1", "-k", str(sockets)], owner=owner)

        def ready() -> bool:
            return subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                                  capture_output=True).returncode == 0

        _wait(ready, "postgres", proc, self.log("postgres"))
        exists = subprocess.run([str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U",
                                 "dicomgw", "-d", "postgres", "-tAc",
                                 "SELECT 1 FROM pg_database WHERE datname='dicomgw'"],
                                capture_output=True, text=True, check=True).stdout.strip()
        if exists != "1":
            subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                            "dicomgw", "dicomgw"], check=True, capture_output=True)

    def migrate(self) -> None:
        from dicomgw.index.db import upgrade_sync

        upgrade_sync(self.config.service_env()["DICOMGW_INDEX_URL"])

    def start_service(self, name: str, port: int) -> None:
        proc = self._spawn(name, [str(BIN / "uvicorn"), "--factory", f"dicomgw_{name}.app:create_app",
                                  "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
                                  "--timeout-graceful-shutdown", "30"], self.config.service_env())
        _wait(lambda: _http_ok(f"http://127.0.0.1:{port}/readyz"), name, proc, self.log(name))

    def start_worker_tier(self) -> None:
        env = self.config.service_env()
        schedule = self.run_dir / "celerybeat-schedule"
        self._spawn("worker", [str(BIN / "dicomgw-worker"), "worker", "--concurrency=2"], env)
        self._spawn("beat", [str(BIN / "dicomgw-worker"), "beat", f"--schedule={schedule}"], env)
        self._spawn("relay", [str(BIN / "dicomgw-worker"), "relay"], env)

    def start_dimse(self) -> None:
        """The DIMSE front door (C-STORE SCP), for PACS that forward only by DICOM networking."""
        port = self.config.dimse_port
        proc = self._spawn("dimse", [str(BIN / "dicomgw-dimse"), "--host", "127.0.0.1", "--port",
                                     str(port)], self.config.service_env())

        def listening() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True

        _wait(listening, "dimse", proc, self.log("dimse"))

    def start_router(self) -> None:
        c = self.config
        conf = TEMPLATE.read_text()
        for key, value in {"RUN_DIR": str(self.run_dir), "HOST": c.host, "PORT": str(c.port),
                           "INGEST_PORT": str(c.ingest_port), "QUERY_PORT": str(c.query_port),
                           "RETRIEVE_PORT": str(c.retrieve_port), "BASE": c.base_path}.items():
            conf = conf.replace("${" + key + "}", value)
        path = self.run_dir / "nginx.conf"
        path.write_text(conf)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        proc = self._spawn("nginx", [nginx, "-c", str(path), "-p", str(self.run_dir)])
        _wait(lambda: _http_ok(f"http://{c.host}:{c.port}/healthz"), "nginx", proc, self.log("nginx"))

    def up(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o755)
        (self.run_dir / "data").mkdir(exist_ok=True)
        try:
            self.start_minio("minio", self.config.minio_port)
            self.start_minio("minio-replica", self.config.replica_port)
            self.start_redis()
            self.start_postgres()
            self.migrate()
            self.start_service("ingest", self.config.ingest_port)
            self.start_service("query", self.config.query_port)
            self.start_service("retrieve", self.config.retrieve_port)
            self.start_worker_tier()
            self.start_dimse()
            self.start_router()
        except BaseException:
            self.down()
            raise

    def stop(self, name: str, *, kill: bool = False) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            _terminate(proc.pid, kill=kill)
            proc.wait(timeout=60)
            self._save()

    def down(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)

    @classmethod
    def down_from(cls, run_dir: Path) -> int:
        """Stop a stack started by another process (make down)."""
        state_file = run_dir / "pids.json"
        if not state_file.exists():
            return 0
        pids = json.loads(state_file.read_text())["pids"]
        for pid in reversed(list(pids.values())):
            _terminate(pid)
        deadline = time.monotonic() + 60
        for pid in pids.values():
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
        state_file.unlink()
        return len(pids)


def allow_traversal(path: Path) -> None:
    """Let another user (the postgres account) reach ``path`` through its parent folders."""
    for parent in path.resolve().parents:
        if str(parent) in ("/", "/tmp"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o011)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _terminate(pid: int, *, kill: bool = False) -> None:
    try:
        os.killpg(pid, signal.SIGKILL if kill else signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


def main(action: str, run_dir: Path) -> int:
    if action == "down":
        stopped = Stack.down_from(run_dir)
        print(f"stopped {stopped} process(es)")
        return 0
    config = StackConfig(run_dir=run_dir)
    stack = Stack(config)
    stack.up()
    print(f"dicomgw stack up: DICOMweb at {config.url}, DIMSE (AE DICOMGW) at 127.0.0.1:"
          f"{config.dimse_port}  (logs in {stack.run_dir / 'logs'}; `make down` stops it)")
    return 0
