"""The local multi-process stack (`dicomgw stack up|down`, `make up|down`).

Two MinIO servers (primary and replica), Redis, PostgreSQL, the ingest, query and retrieve services,
the Celery worker, beat and outbox relay, the DIMSE front door and nginx routing by method and path in
front — all real processes on this machine, the same shape as the Kubernetes deployment, supervised by
supervisord as Kubernetes supervises pods (a process that dies is restarted). Tests and the soak start
their own stack on free ports with the same code; the soak puts toxiproxy between the dicomgw
processes and their back ends.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

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
    # the fault proxy (toxiproxy) of the soak: its API port, and the port it listens on for each
    # back end it stands in front of ("postgres", "minio", "minio-replica", "redis"); the dicomgw
    # processes then reach that back end through it. Empty: no proxy.
    toxiproxy_port: int = 8474
    proxy_ports: dict[str, int] = field(default_factory=dict)
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
            if kind is None or name in ("extra_env", "proxy_ports"):
                continue
            values[name] = int(value) if kind in (int, "int") else Path(value) if kind in (
                Path, "Path") else value
        values["extra_env"] = state.get("extra_env", {})
        values["proxy_ports"] = state.get("proxy_ports", {})
        return cls(**values)  # type: ignore[arg-type]

    def service_env(self) -> dict[str, str]:
        """The settings every dicomgw process of the stack runs with."""
        via = self.proxy_ports
        minio, replica_port = via.get("minio", self.minio_port), via.get("minio-replica", self.replica_port)
        # clients reach the primary MinIO itself (never through a fault proxy) for presigned downloads
        s3 = {"ENDPOINT_URL": f"http://127.0.0.1:{minio}", "BUCKET": "dicom-originals",
              "PUBLIC_URL": f"http://127.0.0.1:{self.minio_port}"}
        replica = {"ENDPOINT_URL": f"http://127.0.0.1:{replica_port}", "BUCKET": "dicom-replica"}
        postgres, redis = via.get("postgres", self.postgres_port), via.get("redis", self.redis_port)
        env = {
            "DATA_DIR": str(self.run_dir / "data"),
            "DICOMGW_INDEX_URL": f"postgresql+asyncpg://dicomgw@127.0.0.1:{postgres}/dicomgw",
            "DICOMGW_INDEX_MIGRATE": "false",
            "DICOMGW_WORKER_BROKER_URL": f"redis://127.0.0.1:{redis}/0",
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


@dataclass
class Program:
    """One supervised process of the stack."""

    name: str
    command: list[str]
    ready: Callable[[], bool]
    user: str | None = None
    stop_signal: str = "TERM"


class Stack:
    """The stack's processes, supervised by supervisord the way Kubernetes supervises pods: a process
    that dies is restarted (with a growing back-off while it keeps dying on start), and the stack is
    driven through supervisord's XML-RPC interface (run_dir/supervisor.sock)."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.run_dir = config.run_dir.resolve()
        self.started: list[str] = []  # in start order
        self.supervisor: subprocess.Popen[bytes] | None = None

    # -- supervision -----------------------------------------------------------------------------
    @property
    def socket_path(self) -> Path:
        return self.run_dir / "supervisor.sock"

    def rpc(self) -> Any:
        """supervisord's XML-RPC interface (``.supervisor.*`` methods)."""
        return _rpc(self.socket_path)

    def programs(self) -> list[Program]:
        """Every process of the stack, in start order."""
        c = self.config
        tools = _repo_tools()
        minio = str(tools / "bin" / "minio")
        programs: list[Program] = []
        if c.proxy_ports:
            programs.append(Program(
                "toxiproxy", [str(tools / "bin" / "toxiproxy-server"), "-host", "127.0.0.1", "-port",
                              str(c.toxiproxy_port), "-config", str(self.run_dir / "toxiproxy.json")],
                lambda: _http_ok(f"http://127.0.0.1:{c.toxiproxy_port}/version")))
        for name, port in (("minio", c.minio_port), ("minio-replica", c.replica_port)):
            programs.append(Program(
                name, [minio, "server", str(self.run_dir / name), "--address", f"127.0.0.1:{port}",
                       "--console-address", f"127.0.0.1:{free_port()}", "--quiet"],
                lambda port=port: _http_ok(f"http://127.0.0.1:{port}/minio/health/live")))  # type: ignore[misc]
        programs.append(Program(
            "redis", ["redis-server", "--port", str(c.redis_port), "--bind", "127.0.0.1", "--dir",
                      str(self.run_dir / "redis"), "--appendonly", "yes", "--save", ""],
            lambda: _redis_ping(c.redis_port)))
        bin_dir = _postgres_bin()
        programs.append(Program(
            # SIGINT is PostgreSQL's fast shutdown (SIGTERM waits for every client to leave)
            "postgres", [str(bin_dir / "postgres"), "-D", str(self.run_dir / "postgres"), "-p",
                         str(c.postgres_port), "-h", "127.0.0.1", "-k", str(self.run_dir / "postgres")],
            lambda: subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p",
                                    str(c.postgres_port)], capture_output=True).returncode == 0,
            user="postgres" if os.geteuid() == 0 else None, stop_signal="INT"))
        for name, port in (("ingest", c.ingest_port), ("query", c.query_port),
                           ("retrieve", c.retrieve_port)):
            programs.append(Program(
                name, [str(BIN / "uvicorn"), "--factory", f"dicomgw_{name}.app:create_app", "--host",
                       "127.0.0.1", "--port", str(port), "--no-access-log",
                       "--timeout-graceful-shutdown", "30"],
                lambda port=port: _http_ok(f"http://127.0.0.1:{port}/readyz")))  # type: ignore[misc]
        worker = str(BIN / "dicomgw-worker")
        programs += [
            Program("worker", [worker, "worker", "--concurrency=2"], lambda: True),
            Program("beat", [worker, "beat", f"--schedule={self.run_dir / 'celerybeat-schedule'}"],
                    lambda: True),
            Program("relay", [worker, "relay"], lambda: True),
            Program("dimse", [str(BIN / "dicomgw-dimse"), "--host", "127.0.0.1", "--port",
                              str(c.dimse_port)], lambda: _listening(c.dimse_port)),
            Program("nginx", [shutil.which("nginx") or "/usr/sbin/nginx", "-c",
                              str(self.run_dir / "nginx.conf"), "-p", str(self.run_dir)],
                    lambda: _http_ok(f"http://{c.host}:{c.port}/healthz")),
        ]
        return programs

    def _write_supervisor_conf(self) -> Path:
        def quote(text: str) -> str:
            return text.replace("%", "%%")

        logs = self.run_dir / "logs"
        lines = [
            "[supervisord]", "nodaemon=true", f"logfile={quote(str(logs / 'supervisord.log'))}",
            f"pidfile={quote(str(self.run_dir / 'supervisord.pid'))}", f"childlogdir={quote(str(logs))}",
            "", "[unix_http_server]", f"file={quote(str(self.socket_path))}", "chmod=0700",
            "", "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        ]
        for program in self.programs():
            lines += [
                f"[program:{program.name}]",
                "command=" + quote(" ".join(shlex.quote(arg) for arg in program.command)),
                "autostart=false",
                # restarted whenever it dies; while it keeps dying within startsecs of its start,
                # supervisord waits 1, 2, 3... seconds between attempts (a crash-loop back-off)
                "autorestart=true", "startsecs=1", "startretries=30",
                f"stopsignal={program.stop_signal}", "stopwaitsecs=30",
                "stopasgroup=true", "killasgroup=true",
                f"stdout_logfile={quote(str(self.log(program.name)))}", "stdout_logfile_maxbytes=0",
                "redirect_stderr=true",
                *([f"user={program.user}"] if program.user else []), "",
            ]
        path = self.run_dir / "supervisord.conf"
        path.write_text("\n".join(lines))
        return path

    def start_supervisor(self) -> None:
        """supervisord with every program defined and none started; the environment of every
        program is the stack's (service_env) plus MinIO's credentials."""
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        conf = self._write_supervisor_conf()
        env = {**os.environ, **self.config.service_env(),
               "MINIO_ROOT_USER": self.config.minio_user,
               "MINIO_ROOT_PASSWORD": self.config.minio_password,
               "MINIO_BROWSER": "off", "MINIO_UPDATE": "off"}
        self.socket_path.unlink(missing_ok=True)
        log = self.log("supervisord-console")
        self.supervisor = subprocess.Popen([str(BIN / "supervisord"), "-c", str(conf)], env=env,
                                           stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                           start_new_session=True)
        self._save()
        _wait(lambda: bool(self.rpc().supervisor.getState()["statename"] == "RUNNING"),
              "supervisord", self.supervisor, log)

    def start(self, *names: str, seconds: float = 60) -> None:
        """Start programs together and wait until each answers (its readiness check)."""
        programs = {p.name: p for p in self.programs() if p.name in names}
        rpc = self.rpc()
        for name in names:
            if rpc.supervisor.getProcessInfo(name)["statename"] not in ("RUNNING", "STARTING", "BACKOFF"):
                with contextlib.suppress(xmlrpc.client.Fault):  # restarted by supervisord meanwhile
                    rpc.supervisor.startProcess(name, False)
        for name in names:
            def ready(name: str = name) -> bool:
                state = self.rpc().supervisor.getProcessInfo(name)["statename"]
                if state == "FATAL":
                    raise RuntimeError(f"{name} could not start; see {self.log(name)}:\n"
                                       f"{_tail(self.log(name))}")
                return state in ("STARTING", "RUNNING") and programs[name].ready()

            _wait(ready, name, None, self.log(name), seconds)
            if name not in self.started:
                self.started.append(name)

    def stop(self, name: str, *, kill: bool = False) -> None:
        """Stop a program (it stays stopped until started again); with ``kill`` it gets SIGKILL
        instead of its stop signal."""
        rpc = self.rpc()
        if kill:
            rpc.supervisor.signalProcess(name, "KILL")
        with contextlib.suppress(xmlrpc.client.Fault):  # not running
            rpc.supervisor.stopProcess(name, True)

    def kill(self, name: str) -> int:
        """kill -9 of a program's whole process group, as a node or the OOM killer would; supervisord
        restarts it. Returns the pid killed."""
        pid = int(self.rpc().supervisor.getProcessInfo(name)["pid"])
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        return pid

    def pids(self) -> dict[str, int]:
        """The running programs' pids."""
        return {info["name"]: int(info["pid"]) for info in self.rpc().supervisor.getAllProcessInfo()
                if info["pid"]}

    def _save(self) -> None:
        state = {"config": {k: str(v) for k, v in asdict(self.config).items()},
                 "extra_env": self.config.extra_env, "proxy_ports": self.config.proxy_ports,
                 "pids": {"supervisord": self.supervisor.pid} if self.supervisor else {}}
        (self.run_dir / "pids.json").write_text(json.dumps(state, indent=1))

    def log(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"

    # -- the stack -------------------------------------------------------------------------------
    def init_postgres(self) -> None:
        bin_dir = _postgres_bin()
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

    def create_database(self) -> None:
        """The dicomgw database in the running PostgreSQL, when it is new."""
        bin_dir = _postgres_bin()
        port = self.config.postgres_port
        exists = subprocess.run([str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U",
                                 "dicomgw", "-d", "postgres", "-tAc",
                                 "SELECT 1 FROM pg_database WHERE datname='dicomgw'"],
                                capture_output=True, text=True, check=True).stdout.strip()
        if exists != "1":
            subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                            "dicomgw", "dicomgw"], check=True, capture_output=True)

    def start_fault_proxy(self) -> None:
        """toxiproxy between the dicomgw processes and their back ends (PostgreSQL, both MinIOs,
        Redis), when the configuration names proxy ports: the soak's network faults go there."""
        c = self.config
        upstreams = {"postgres": c.postgres_port, "minio": c.minio_port,
                     "minio-replica": c.replica_port, "redis": c.redis_port}
        proxies = [{"name": name, "listen": f"127.0.0.1:{port}",
                    "upstream": f"127.0.0.1:{upstreams[name]}", "enabled": True}
                   for name, port in c.proxy_ports.items()]
        # the proxies from a file, so that a restarted toxiproxy has them again
        (self.run_dir / "toxiproxy.json").write_text(json.dumps(proxies, indent=1))
        if not (_repo_tools() / "bin" / "toxiproxy-server").exists():
            raise RuntimeError("toxiproxy is not built: run `make tools-toxiproxy`")
        self.start("toxiproxy")

    def migrate(self) -> None:
        from dicomgw.index.db import upgrade_sync

        upgrade_sync(self.config.service_env()["DICOMGW_INDEX_URL"])

    def write_router_conf(self) -> None:
        c = self.config
        conf = TEMPLATE.read_text()
        for key, value in {"RUN_DIR": str(self.run_dir), "HOST": c.host, "PORT": str(c.port),
                           "INGEST_PORT": str(c.ingest_port), "QUERY_PORT": str(c.query_port),
                           "RETRIEVE_PORT": str(c.retrieve_port), "BASE": c.base_path}.items():
            conf = conf.replace("${" + key + "}", value)
        (self.run_dir / "nginx.conf").write_text(conf)

    def up(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o755)
        (self.run_dir / "data").mkdir(exist_ok=True)
        if not (_repo_tools() / "bin" / "minio").exists():
            raise RuntimeError("MinIO is not built: run `make tools-minio`")
        try:
            self.init_postgres()
            self.write_router_conf()
            self.start_supervisor()
            if self.config.proxy_ports:
                self.start_fault_proxy()
            for name in ("minio", "minio-replica", "redis"):
                (self.run_dir / name).mkdir(parents=True, exist_ok=True)
            self.start("minio", "minio-replica", "redis", "postgres")
            self.create_database()
            self.migrate()
            # seven Python processes importing at once take a while on a small, busy machine
            self.start("ingest", "query", "retrieve", "worker", "beat", "relay", "dimse", seconds=180)
            self.start("nginx")
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        if self.supervisor is None:
            return
        _shutdown(self.socket_path, self.started)
        try:
            self.supervisor.wait(timeout=90)
        except subprocess.TimeoutExpired:
            _terminate(self.supervisor.pid, kill=True)
            self.supervisor.wait(timeout=10)
        self.supervisor = None
        self.started = []
        (self.run_dir / "pids.json").unlink(missing_ok=True)

    @classmethod
    def down_from(cls, run_dir: Path) -> int:
        """Stop a stack started by another process (make down)."""
        state_file = run_dir / "pids.json"
        if not state_file.exists():
            return 0
        pids = json.loads(state_file.read_text())["pids"]
        stopped = _shutdown(run_dir.resolve() / "supervisor.sock", [])
        for pid in pids.values():
            _terminate(pid)
        deadline = time.monotonic() + 90
        for pid in pids.values():
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
        state_file.unlink()
        return stopped


def _rpc(socket_path: Path) -> Any:
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{socket_path}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def _shutdown(socket_path: Path, order: list[str]) -> int:
    """Stop every program (the dicomgw processes before their back ends), then supervisord.
    Returns how many programs were running."""
    try:
        rpc = _rpc(socket_path)
        running = [i["name"] for i in rpc.supervisor.getAllProcessInfo()
                   if i["statename"] in ("RUNNING", "STARTING", "BACKOFF")]
    except (OSError, xmlrpc.client.Error):
        return 0
    first = [name for name in reversed(order) if name in running]
    for name in [*first, *(n for n in running if n not in first)]:
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            rpc.supervisor.stopProcess(name, True)
    with contextlib.suppress(OSError, xmlrpc.client.Error):
        rpc.supervisor.shutdown()
    return len(running)


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run `make tools-postgres`")
    return Path(found[-1]).parent


def _redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


def _listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


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
