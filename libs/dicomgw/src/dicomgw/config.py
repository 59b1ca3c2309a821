"""Settings, one pydantic-settings class per concern, read from DICOMGW_* environment variables.

Defaults are those of the embedded mode: SQLite index and a local object folder under DATA_DIR.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StorageSettings(BaseSettings):
    """Where originals and derived objects live."""

    model_config = SettingsConfigDict(env_prefix="DICOMGW_STORAGE_")

    backend: Literal["local", "s3"] = "local"
    # local backend: folder of objects (default DATA_DIR/objects)
    path: Path | None = None
    # s3 backend
    endpoint_url: str | None = None
    bucket: str = "dicom-originals"
    region: str = "us-east-1"
    access_key: str | None = None
    secret_key: str | None = None
    create_bucket: bool = True
    # bounded pool of concurrent PUTs per request
    max_concurrency: int = 8
    # s3 backend: the storage class objects are written with (e.g. STANDARD_IA, GLACIER_IR on AWS,
    # REDUCED_REDUNDANCY on MinIO: its own parity for that class); empty: the bucket's default
    storage_class: str | None = None
    # s3 backend: the store's endpoint as clients outside reach it (an ingress of MinIO, S3 itself). When
    # set, a research collection's readers may download its objects straight from the store with
    # presigned GET URLs (``/collections/{name}/versions/{n}/objects``), at the store's speed
    public_url: str | None = None
    # how long such a URL stays valid
    presign_seconds: int = Field(default=900, ge=60, le=7 * 24 * 3600)


class ReplicaSettings(StorageSettings):
    """The second copy of every original (another bucket, site or folder); off unless configured."""

    model_config = SettingsConfigDict(env_prefix="DICOMGW_REPLICA_")

    backend: Literal["none", "local", "s3"] = "none"  # type: ignore[assignment]
    bucket: str = "dicom-replica"

    @property
    def enabled(self) -> bool:
        return self.backend != "none"


class WorkerSettings(BaseSettings):
    """Background work: the Celery tier (distributed) or the in-process loop (embedded)."""

    model_config = SettingsConfigDict(env_prefix="DICOMGW_WORKER_")

    broker_url: str = "redis://127.0.0.1:6379/0"
    # seconds between outbox polls of the embedded loop and of the relay
    poll_seconds: float = 2.0
    # seconds between sweeps that queue due verifications and missing replications
    sweep_seconds: float = 60.0
    # every original is re-verified once per cycle
    verify_cycle_seconds: float = 7 * 24 * 3600
    # an outbox item handed to Celery is offered again after this lease if not done
    lease_seconds: float = 600
    # the relay publishes due outbox items only while its Celery queue holds fewer than this many
    # (counted as messages times batch_size; the outbox is the durable queue, the broker holds only what
    # the workers will take soon)
    relay_queue_limit: int = Field(default=200, ge=1)
    # outbox rows per Celery message for verifications and replications (one index read, copies
    # checked concurrently, one commit for all of them)
    batch_size: int = Field(default=20, ge=1)
    # seconds between orphan sweeps (originals in the store that no index row references; 0: never)
    orphan_sweep_seconds: float = 24 * 3600
    # an unreferenced original younger than this may belong to a STOW still under way: never touched.
    # Longer than the longest STOW request (its first parts are stored before its rows are committed).
    orphan_grace_seconds: float = Field(default=3600, ge=0)
    # port of the Celery worker's /metrics (its pool processes share one multiprocess registry)
    metrics_port: int = 9808
    task_soft_time_limit: float = 600
    task_time_limit: float = 900
    concurrency: int = 2
    # a Celery worker with work waiting in its queues that has taken none for this long, though it had
    # a free slot, has stopped consuming (Celery/kombu can hang after a broker connection reset): it
    # exits so that its supervisor (Kubernetes, the local stack's supervisord) starts it again. 0: never
    stall_seconds: float = Field(default=120, ge=0)


class DimseSettings(BaseSettings):
    """The DIMSE front door (C-STORE storage SCP) for PACS that speak only DICOM networking."""

    model_config = SettingsConfigDict(env_prefix="DICOMGW_DIMSE_")

    # 0 = off (the embedded gateway starts it beside HTTP when a port is set)
    port: int = 0
    host: str = "127.0.0.1"
    ae_title: str = "DICOMGW"
    # calling AE titles allowed to store; empty = any
    allowed_aes: list[str] = Field(default_factory=list)
    max_pdu: int = 65536
    # DICOM TLS (PS3.15 B.1 Basic TLS Secure Transport Connection Profile): the SCP's certificate and
    # key (PEM); with a CA file, peers must present a certificate it signed (mutual authentication)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    # Storage Commitment (PS3.4 Annex J): how long an instance stored but not yet verified is waited
    # for before it is reported failed (0x0110); never committed before its checksum is verified
    commitment_wait_seconds: float = 300.0
    # where to open an association for an N-EVENT-REPORT once the requester's own is gone: calling AE
    # title -> "host:port", e.g. {"CT01": "10.1.2.3:104"} (never the address a request came from)
    peers: dict[str, str] = Field(default_factory=dict)


class IndexSettings(BaseSettings):
    """The index database."""

    model_config = SettingsConfigDict(env_prefix="DICOMGW_INDEX_")

    # SQLAlchemy async URL; default sqlite+aiosqlite:///DATA_DIR/index.sqlite3
    url: str | None = None
    # case-insensitive person-name matching (PS3.4 C.2.2.2.1 leaves it to the implementation)
    case_insensitive_names: bool = True
    pool_size: int = 10
    # run the migrations at start-up (embedded); a split deployment runs them once, beforehand
    migrate: bool = True


class HttpSettings(BaseSettings):
    """The HTTP front: base path, CORS, limits."""

    model_config = SettingsConfigDict(env_prefix="DICOMGW_HTTP_")

    base_path: str = "/dicom-web"
    # absolute URL clients reach the DICOMweb root at (e.g. https://pacs.example.org/dicom-web);
    # default: worked out from each request (X-Forwarded-Host/Proto, Host)
    public_url: str | None = None
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    cors_max_age: int = 86400
    # 0 = no cap on a STOW request body
    max_request_bytes: int = 0
    # parts larger than this are spooled to disk while they stream in
    spool_memory_bytes: int = 1 << 20
    # a STOW body that sends nothing for this long is answered 408 and its spooled parts removed: a
    # slow or stalled sender cannot hold a connection and spool space for ever
    body_idle_seconds: float = 60.0
    # processes serving HTTP (`dicomgw serve`); 0 = one per CPU core. They share one listening socket;
    # one of them also runs the background loop and the DIMSE listener.
    workers: int = 0
    # QIDO default and maximum page size
    qido_default_limit: int = 1000
    qido_max_limit: int = 10000


class AuthSettings(BaseSettings):
    """Who may read, write and administer: OIDC access tokens for people, API keys for machines."""

    model_config = SettingsConfigDict(env_prefix="DICOMGW_AUTH_")

    # none: every request is allowed (the embedded default, on 127.0.0.1); required: every DICOMweb
    # and admin route needs a credential with the route's scope (API keys always, OIDC with an issuer)
    mode: Literal["none", "required"] = "none"
    # the OpenID provider (its discovery document is {issuer}/.well-known/openid-configuration)
    issuer: str | None = None
    # accepted `aud` values of access tokens; empty: `aud` is not checked
    audience: list[str] = Field(default_factory=list)
    # where the signing keys are, when not the discovery document's jwks_uri
    jwks_url: str | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "RS384", "RS512", "PS256",
                                                           "ES256", "ES384"])
    # claims (dotted paths) whose values are scopes or roles: OAuth's `scope` and Keycloak's realm roles
    scope_claims: list[str] = Field(default_factory=lambda: ["scope", "realm_access.roles"])
    # roles or scopes of the provider that stand for dicomgw scopes, e.g. {"radiologist": ["dicom.read"]}
    scope_map: dict[str, list[str]] = Field(default_factory=dict)
    # tolerated clock difference for exp/nbf/iat
    leeway_seconds: int = 60
    # secret that API key hashes are keyed with (HMAC-SHA256); changing it invalidates every key
    key_secret: str | None = None
    # seconds a key's look-up is reused: a revocation takes effect on every service within this
    key_cache_seconds: float = 5.0
    # /metrics needs dicom.admin too (Prometheus then scrapes with an API key)
    protect_metrics: bool = False


class AuditSettings(BaseSettings):
    """The audit trail of accesses to patient data (PS3.15 A.5 events, kept in the index)."""

    model_config = SettingsConfigDict(env_prefix="DICOMGW_AUDIT_")

    enabled: bool = True
    # seconds between batched writes (identical events within one are written once, with a count)
    flush_seconds: float = 1.0
    # AuditSourceID of the messages: which archive wrote them
    source_id: str = "dicomgw"
    # also send every event as RFC 5424 syslog (IHE ATNA) to udp://host:port or tcp://host:port
    syslog_url: str | None = None


class ColdSettings(StorageSettings):
    """The cold tier: a cheaper bucket or folder the worker moves old originals to (in the form they
    are kept in); reads find them there, more slowly. Off unless configured."""

    model_config = SettingsConfigDict(env_prefix="DICOMGW_COLD_")

    backend: Literal["none", "local", "s3"] = "none"  # type: ignore[assignment]
    bucket: str = "dicom-cold"
    # seconds after ingest before a verified (and replicated) original moves to the cold tier; a
    # partition may set its own (`dicomgw partitions policy`); negative = never
    after_seconds: float = -1
    # a hot copy stays this long after its cold copy is committed, so that reads under way finish
    drop_after_seconds: float = Field(default=300, ge=0)

    @property
    def enabled(self) -> bool:
        return self.backend != "none"


FrameCodec = Literal["jpegls", "htj2k", "jpegxl", "zstd"]
# the library's default (dicomgw.compact.DEFAULT_CODECS: JPEG XL only where it saves much)
DEFAULT_FRAME_CODECS: tuple[FrameCodec, ...] = ("jpegls", "htj2k", "jpegxl", "zstd")


class CompactSettings(BaseSettings):
    """Compact originals (dicomgw.originals): a verified original kept in a lossless form that
    reconstructs its bytes exactly, by the worker tier, never on the ingest path."""

    model_config = SettingsConfigDict(env_prefix="DICOMGW_COMPACT_")

    # seconds after ingest before a verified (and, with a replica, replicated) original is compacted;
    # 0 = as soon as it is verified; negative = never (the default: originals stay verbatim)
    after_seconds: float = -1
    # the replica's copy: compact as well (the cost saving twice), or kept verbatim
    replica: Literal["compact", "verbatim"] = "compact"
    # originals larger than this stay verbatim (compaction holds one in memory)
    max_bytes: int = Field(default=256 << 20, ge=0)
    # the frame codecs tried on each native image, the smallest kept (dicomgw.compact.ALL_CODECS:
    # jpegls, htj2k, jpegxl, zstd); jpegxl stores about 8 % less at half the speed
    codecs: list[FrameCodec] = Field(default_factory=lambda: list(DEFAULT_FRAME_CODECS))
    # a verbatim copy stays this long after its compact form is committed, so that reads that began
    # before (with the row they had read) still find it
    drop_after_seconds: float = Field(default=300, ge=0)

    @property
    def enabled(self) -> bool:
        return self.after_seconds >= 0


class CostSettings(BaseSettings):
    """Prices per TB-month (10^12 bytes) of each store, for `dicomgw storage report`: what keeping the
    archive costs, and what it would cost with every original verbatim."""

    model_config = SettingsConfigDict(env_prefix="DICOMGW_COST_")

    currency: str = "USD"
    # list prices of object storage's standard class, as a starting point; set your own
    primary_per_tb_month: float = Field(default=23.0, ge=0)
    replica_per_tb_month: float = Field(default=23.0, ge=0)
    cold_per_tb_month: float = Field(default=4.0, ge=0)


class Settings(BaseSettings):
    """All settings of one dicomgw process."""

    model_config = SettingsConfigDict(env_prefix="DICOMGW_")

    data_dir: Path = Field(default=Path("var"), validation_alias="DATA_DIR")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, validation_alias="PORT")
    log_level: str = "info"
    # publish the archive's integrity gauges on /metrics (one service per deployment is enough)
    metrics_integrity: bool = True
    storage: StorageSettings = Field(default_factory=StorageSettings)
    replica: ReplicaSettings = Field(default_factory=ReplicaSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    dimse: DimseSettings = Field(default_factory=DimseSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    compact: CompactSettings = Field(default_factory=CompactSettings)
    cold: ColdSettings = Field(default_factory=ColdSettings)
    cost: CostSettings = Field(default_factory=CostSettings)

    @property
    def objects_path(self) -> Path:
        return self.storage.path or (self.data_dir / "objects")

    @property
    def replica_path(self) -> Path:
        return self.replica.path or (self.data_dir / "replica")

    @property
    def cold_path(self) -> Path:
        return self.cold.path or (self.data_dir / "cold")

    @property
    def spool_path(self) -> Path:
        return self.data_dir / "spool"

    @property
    def index_url(self) -> str:
        if self.index.url:
            return self.index.url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"
