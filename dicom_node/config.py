"""The node's config file: TOML loaded into pydantic models, checked before anything listens.

Every problem is reported with its key path (``routes[1].destinations[0]``) and the
offending value, all at once, so that an administrator fixes the file in one pass.
Relative paths are resolved against the folder of the config file.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydicom.datadict import tag_for_keyword
from pynetdicom.utils import set_ae

from dicom_node.errors import ConfigError
from dicom_node.uid_syntax import is_uid

# Match keys that are not DICOM keywords but facts of the association.
ASSOCIATION_MATCH_KEYS = frozenset({"CallingAETitle"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_SectionT = TypeVar("_SectionT", bound=_Section)


def _ae_title(value: str) -> str:
    try:
        return str(set_ae(value, "ae_title", allow_empty=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a valid AE title {value!r}: {exc}") from None


AETitle = Annotated[str, Field(min_length=1, max_length=16)]
Port = Annotated[int, Field(ge=1, le=65535)]


class TlsSection(_Section):
    """TLS for the listener; ``ca_file`` set means clients must present a certificate."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None


class NodeSection(_Section):
    """``[node]``: who and where the listener is, storage, database, limits, logging."""

    ae_title: AETitle = "AINODE"
    host: str = "0.0.0.0"
    port: Port = 11112
    storage_dir: Path = Path("var/spool")
    database_url: str = "sqlite:///var/node.db"
    min_free_disk_mb: int = Field(default=1024, ge=0)
    duplicate_policy: Literal["keep_first", "replace"] = "keep_first"
    private_sop_classes: list[str] = []
    max_associations: int = Field(default=32, ge=1)
    max_associations_per_host: int = Field(default=16, ge=1)
    association_request_timeout_seconds: float = Field(default=5.0, gt=0)
    network_timeout_seconds: float = Field(default=60.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    _validate_ae = field_validator("ae_title")(classmethod(lambda cls, v: _ae_title(v)))

    @field_validator("private_sop_classes")
    @classmethod
    def _uids(cls, value: list[str]) -> list[str]:
        for uid in value:
            if not is_uid(uid):
                raise ValueError(f"not a valid UID {uid!r}")
        return value


def _networks(value: list[str]) -> list[str]:
    for host in value:
        try:
            ipaddress.ip_network(host, strict=False)
        except ValueError:
            raise ValueError(f"not an IP address or network {host!r}") from None
    return value


class SecuritySection(_Section):
    """``[security]``: who may associate (AE titles, addresses) and the listener's TLS."""

    allowed_calling_aets: list[Annotated[AETitle, AfterValidator(_ae_title)]] = []
    allowed_hosts: list[str] = []
    check_called_aet: bool = True
    tls: TlsSection | None = None

    _validate_hosts = field_validator("allowed_hosts")(classmethod(lambda cls, v: _networks(v)))


class PeerConfig(_Section):
    """One ``[[peers]]`` entry of ``kind = "dimse"`` (the default): a DICOM peer results
    go to (C-STORE, storage commitment), or counts come from (C-FIND)."""

    kind: Literal["dimse"] = "dimse"
    name: str = Field(min_length=1)
    ae_title: AETitle
    host: str
    port: Port
    storage_commitment: bool = False
    tls: bool = False
    # How `dicom-node backfill` fetches studies: C-GET on our own association (no
    # listener needed), or C-MOVE to the node's AE title (the archive stores to the listener).
    retrieve: Literal["get", "move"] = "get"

    _validate_ae = field_validator("ae_title")(classmethod(lambda cls, v: _ae_title(v)))


class NoAuth(_Section):
    type: Literal["none"] = "none"


def _exactly_one(section: BaseModel, *keys: str) -> None:
    given = [key for key in keys if getattr(section, key) is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(keys)} (got {given or 'none'})")


class BasicAuth(_Section):
    """HTTP basic: the password comes from an environment variable or a file, never
    from the config file itself."""

    type: Literal["basic"]
    username: str = Field(min_length=1)
    password_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> BasicAuth:
        _exactly_one(self, "password_env", "password_file")
        return self


class BearerAuth(_Section):
    """A bearer token read from a file or printed by a command (``gcloud auth
    print-access-token``, ``az account get-access-token ...``), re-read every
    ``refresh_seconds`` so that short-lived tokens are renewed."""

    type: Literal["bearer"]
    token_file: Path | None = None
    token_command: list[str] | None = Field(default=None, min_length=1)
    refresh_seconds: float = Field(default=300.0, gt=0)
    command_timeout_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> BearerAuth:
        _exactly_one(self, "token_file", "token_command")
        return self


class ClientCertificateAuth(_Section):
    """TLS client certificate (mutual TLS)."""

    type: Literal["client_certificate"]
    cert_file: Path
    key_file: Path


DicomwebAuth = Annotated[
    NoAuth | BasicAuth | BearerAuth | ClientCertificateAuth, Field(discriminator="type")
]


def _http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", value):
        raise ValueError(f"not an http:// or https:// URL without query {value!r}")
    return value.rstrip("/")


class DicomwebPeerConfig(_Section):
    """A DICOMweb peer (``kind = "dicomweb"``): STOW-RS delivery, QIDO-RS counts,
    WADO-RS retrieval, under ``url`` (the service root, e.g. ``.../dicom-web``)."""

    kind: Literal["dicomweb"]
    name: str = Field(min_length=1)
    url: str
    auth: DicomwebAuth = NoAuth()
    ca_file: Path | None = None
    verify_tls: bool = True
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    read_timeout_seconds: float = Field(default=120.0, gt=0)
    max_request_mb: float = Field(default=64.0, gt=0)

    _validate_url = field_validator("url")(classmethod(lambda cls, v: _http_url(v)))


def _peer_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("kind", "dimse"))
    return str(getattr(value, "kind", "dimse"))


Peer = Annotated[
    Annotated[PeerConfig, Tag("dimse")] | Annotated[DicomwebPeerConfig, Tag("dicomweb")],
    Discriminator(
        _peer_kind,
        custom_error_type="peer_kind",
        custom_error_message="kind must be 'dimse' (the default) or 'dicomweb'",
    ),
]


class CompletionSection(_Section):
    """``[completion]``: when a study counts as complete (quiet timer, C-FIND counts)."""

    stable_seconds: float = Field(default=30.0, ge=0)
    query_peer: str | None = None
    min_seconds: float = Field(default=5.0, ge=0)
    max_seconds: float = Field(default=900.0, gt=0)
    scan_interval_seconds: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> CompletionSection:
        if self.min_seconds > self.max_seconds:
            raise ValueError(
                f"min_seconds ({self.min_seconds}) is greater than max_seconds ({self.max_seconds})"
            )
        return self


class ModelConfig(_Section):
    """One ``[[models]]`` entry: a model package and the backend and device to run it on."""

    name: str = Field(min_length=1)
    path: Path
    backend: Literal["auto", "tensorrt", "onnxruntime", "torch"] = "auto"
    device: str = "auto"


class RegexMatch(_Section):
    """A route condition ``{regex = "..."}``: the value must contain a match."""

    regex: str

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression {value!r}: {exc}") from None
        return value


class RangeMatch(_Section):
    """A route condition ``{min = .., max = ..}``: a closed numeric range."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounded(self) -> RangeMatch:
        if self.min is None and self.max is None:
            raise ValueError("a range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


Scalar = str | int | float


def _match_kind(value: Any) -> str:
    if isinstance(value, dict | RegexMatch | RangeMatch):
        return "regex" if isinstance(value, RegexMatch) or "regex" in value else "range"
    return "list" if isinstance(value, list) else "value"


MatchValue = Annotated[
    Annotated[Scalar, Tag("value")]
    | Annotated[list[Scalar], Tag("list")]
    | Annotated[RegexMatch, Tag("regex")]
    | Annotated[RangeMatch, Tag("range")],
    Discriminator(_match_kind),
]


class StepCondition(_Section):
    """``when = {step = "A", label = "liver", ...}``: what an earlier step must have found
    in a series for this step to run on it. Every bound given must hold in the same
    series; with no bound, ``present = true`` is meant (the label crossed its threshold).
    Probabilities are a classifier's or detector's; volumes (ml) a segmenter's."""

    step: str = Field(min_length=1)
    label: str = Field(min_length=1)
    present: bool | None = None
    min_probability: float | None = Field(default=None, ge=0, le=1)
    max_probability: float | None = Field(default=None, ge=0, le=1)
    min_volume_ml: float | None = Field(default=None, ge=0)
    max_volume_ml: float | None = Field(default=None, ge=0)

    def uses_volume(self) -> bool:
        """Whether a volume bound is given (only a segmenter has volumes)."""
        return self.min_volume_ml is not None or self.max_volume_ml is not None

    def uses_probability(self) -> bool:
        """Whether a probability bound is given (a segmenter has none)."""
        return self.min_probability is not None or self.max_probability is not None


class StepSelect(_Section):
    """``select = {step = "bodypart", models = {chest = "seg-chest", ...}}``: the label an
    earlier classifier gives a series (its most probable positive label) picks the model
    this step runs on that series."""

    step: str = Field(min_length=1)
    models: dict[str, str] = Field(min_length=1)


MASK_REFERENCE = re.compile(r"^(?P<step>[^:]+):(?P<label>.+)$")


class StepConfig(_Section):
    """One ``steps`` entry of a route: a model (or a ``select``ion of models) that runs
    after an earlier step, when its ``when`` holds, on that step's series, optionally
    restricted to a segment the earlier step found (``input_mask = "STEP:LABEL"``)."""

    name: str | None = Field(default=None, min_length=1)
    model: str | None = Field(default=None, min_length=1)
    select: StepSelect | None = None
    when: StepCondition | None = None
    input_mask: str | None = None

    @field_validator("input_mask")
    @classmethod
    def _mask_reference(cls, value: str | None) -> str | None:
        if value is not None and not MASK_REFERENCE.match(value):
            raise ValueError(f'not "STEP:LABEL" {value!r}')
        return value

    @model_validator(mode="after")
    def _model_or_select(self) -> StepConfig:
        if (self.model is None) == (self.select is None):
            raise ValueError("a step needs exactly one of model and select")
        if self.select is not None and self.name is None:
            raise ValueError("a step with select needs a name")
        return self

    @property
    def step_name(self) -> str:
        """The step's name: ``name``, else its model's."""
        return self.name or self.model or ""

    def mask(self) -> tuple[str, str] | None:
        """``(step, label)`` of ``input_mask``, or None."""
        found = MASK_REFERENCE.match(self.input_mask or "")
        return None if found is None else (found["step"], found["label"])

    def references(self) -> list[tuple[str, str]]:
        """``(key, step name)`` for every earlier step this step names."""
        named = []
        if self.when is not None:
            named.append(("when.step", self.when.step))
        if self.select is not None:
            named.append(("select.step", self.select.step))
        mask = self.mask()
        if mask is not None:
            named.append(("input_mask", mask[0]))
        return named

    @property
    def upstream(self) -> str | None:
        """The step this one runs after (None: it runs when the route matches)."""
        references = self.references()
        return references[0][1] if references else None

    def candidate_models(self) -> list[str]:
        """Every model this step may run: its model, or each model ``select`` names."""
        if self.select is not None:
            return list(dict.fromkeys(self.select.models.values()))
        return [self.model] if self.model else []


class RouteConfig(_Section):
    """Which models run on which series, and where their results go.

    ``match`` maps DICOM keywords (study or series level, ``SOPClassUID``) or
    ``CallingAETitle`` to an exact value, a list of values, ``{regex = "..."}`` or
    ``{min = .., max = ..}``; all conditions must hold.

    ``mode = "shadow"`` runs the route's models and keeps their results and findings
    (``dicom-node results``) but sends them only to ``shadow_destinations`` (a research
    archive), never to ``destinations``; ``shadow_models`` does the same for some of the
    models of a live route. Going live is removing the key: nothing else changes.

    ``steps`` chain models (`StepConfig`): a step that names no earlier step runs like
    ``models`` do; each later one runs after the step it names, as its own job, with its
    results delivered as soon as it finishes (`dicom_node.work.chain`).
    """

    name: str = Field(min_length=1)
    models: list[str] = []
    steps: list[StepConfig] = []
    match: dict[str, MatchValue] = {}
    destinations: list[str] = []
    reply_to_sender: bool = False
    mode: Literal["live", "shadow"] = "live"
    shadow_destinations: list[str] = []
    shadow_models: list[str] = []

    def is_shadow(self, model: str) -> bool:
        """Whether ``model`` runs in shadow on this route (the route's mode or its list)."""
        return self.mode == "shadow" or model in self.shadow_models

    def entry_models(self) -> list[str]:
        """The models that run when the route matches: ``models`` and the first steps."""
        first = [step.model for step in self.steps if step.upstream is None and step.model]
        return list(dict.fromkeys([*self.models, *first]))

    def all_models(self) -> list[str]:
        """Every model the route may run, later steps' included."""
        stepped = [name for step in self.steps for name in step.candidate_models()]
        return list(dict.fromkeys([*self.models, *stepped]))

    def step_named(self, name: str) -> StepConfig | None:
        """The step called ``name``, or None."""
        return next((step for step in self.steps if step.step_name == name), None)

    def first_step_of(self, model: str) -> StepConfig | None:
        """The first step (one after no other) that runs ``model``, or None."""
        return next(
            (s for s in self.steps if s.upstream is None and s.model == model),
            None,
        )

    def steps_after(self, name: str) -> list[StepConfig]:
        """The steps that run after step ``name``, in config order."""
        return [step for step in self.steps if step.upstream == name]

    @field_validator("match")
    @classmethod
    def _keywords(cls, value: dict[str, MatchValue]) -> dict[str, MatchValue]:
        for keyword in value:
            if keyword not in ASSOCIATION_MATCH_KEYS and tag_for_keyword(keyword) is None:
                raise ValueError(f"not a DICOM keyword {keyword!r}")
        return value

    @model_validator(mode="after")
    def _has_destination(self) -> RouteConfig:
        if not self.models and not self.steps:
            raise ValueError("a route needs models or steps")
        if self.mode == "live" and not self.destinations and not self.reply_to_sender:
            raise ValueError(
                'a route needs destinations or reply_to_sender = true (or mode = "shadow")'
            )
        for model in self.shadow_models:
            if model not in self.all_models():
                raise ValueError(f"shadow_models names {model!r}, which is not in models or steps")
        return self


class WorkerSection(_Section):
    """``[worker]``: inference threads, retries with capped backoff, leases, ONNX threads."""

    count: int = Field(default=1, ge=0)
    max_attempts: int = Field(default=3, ge=1)
    retry_backoff_seconds: float = Field(default=30.0, ge=0)
    retry_backoff_max_seconds: float = Field(default=1800.0, ge=0)
    poll_seconds: float = Field(default=1.0, gt=0)
    intra_op_threads: int = Field(default=0, ge=0)
    inter_op_threads: int = Field(default=0, ge=0)
    lease_seconds: float = Field(default=120.0, gt=0)
    # serve --role all: inference in a child process at this lower CPU priority.
    own_process: bool = True
    nice: int = Field(default=10, ge=0, le=19)


class DeliverySection(_Section):
    """``[delivery]``: retries with capped backoff, timeouts, batches, commitment wait."""

    max_attempts: int = Field(default=12, ge=1)
    backoff_initial_seconds: float = Field(default=10.0, ge=0)
    backoff_max_seconds: float = Field(default=600.0, ge=0)
    timeout_seconds: float = Field(default=30.0, gt=0)
    scan_interval_seconds: float = Field(default=2.0, gt=0)
    batch_size: int = Field(default=100, ge=1)
    commitment_timeout_seconds: float = Field(default=3600.0, gt=0)


class ResultsSection(_Section):
    """How result objects are labelled and encoded (`sr_writer.build_results`)."""

    manufacturer: str | None = Field(default=None, min_length=1, max_length=64)
    institution_name: str | None = Field(default=None, min_length=1, max_length=64)
    segmentation: Literal["binary", "fractional"] = "binary"
    parametric_maps: bool = False


class RetentionSection(_Section):
    """``[retention]``: how long spooled instances and results are kept."""

    keep_hours: float = Field(default=72.0, ge=0)
    delete_when_done: bool = False
    scan_interval_seconds: float = Field(default=300.0, gt=0)
    orphan_grace_seconds: float = Field(default=3600.0, ge=0)


class AuditSection(_Section):
    """``[audit]``: the audit trail's folder, rotation, and whether patient ids appear."""

    enabled: bool = True
    dir: Path = Path("var/audit")
    max_file_mb: int = Field(default=50, ge=1)
    keep_files: int = Field(default=20, ge=1)
    include_patient_ids: bool = False


class DicomwebSection(_Section):
    """The STOW-RS receiver (listener role), off by default. Writing needs a bearer
    token from ``tokens_file`` or, with ``tls.ca_file``, a client certificate."""

    enabled: bool = False
    host: str = "0.0.0.0"
    port: Port = 8443
    tls: TlsSection | None = None
    allow_plain_http: bool = False
    tokens_file: Path | None = None
    allowed_hosts: list[str] = []
    max_body_mb: float = Field(default=2048.0, gt=0)
    max_connections: int = Field(default=32, ge=1)

    _validate_hosts = field_validator("allowed_hosts")(classmethod(lambda cls, v: _networks(v)))

    @model_validator(mode="after")
    def _secured(self) -> DicomwebSection:
        if not self.enabled:
            return self
        if self.tls is None and not self.allow_plain_http:
            raise ValueError("enabled without tls: set [dicomweb.tls] or allow_plain_http = true")
        if self.tokens_file is None and (self.tls is None or self.tls.ca_file is None):
            raise ValueError("enabled without tokens_file or tls.ca_file: nobody could write")
        return self


class MetricsSection(_Section):
    """``[metrics]``: the Prometheus endpoint, off by default."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Port = 9108


class DriftSection(_Section):
    """``[drift]``: the window each model is compared in, and when a feature drifts."""

    window_studies: int = Field(default=200, ge=1)
    window_days: float = Field(default=30.0, gt=0)
    min_studies: int = Field(default=30, ge=1)
    psi_threshold: float = Field(default=0.25, gt=0)
    p_value: float = Field(default=0.001, gt=0, lt=1)


class NotificationBase(_Section):
    """What every ``[[notifications]]`` entry has: where it goes (``url``, with the
    DICOMweb peers' ``auth``, TLS and timeout keys), which jobs it announces (``routes``
    and ``models``: empty means all), and whether patient identifiers go with it."""

    name: str = Field(min_length=1)
    url: str
    allow_plain_http: bool = False
    auth: DicomwebAuth = NoAuth()
    ca_file: Path | None = None
    verify_tls: bool = True
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    read_timeout_seconds: float = Field(default=30.0, gt=0)
    routes: list[str] = []
    models: list[str] = []
    include_patient_ids: bool = False

    _validate_url = field_validator("url")(classmethod(lambda cls, v: _http_url(v)))

    @model_validator(mode="after")
    def _https(self) -> NotificationBase:
        if self.url.startswith("http://") and not self.allow_plain_http:
            raise ValueError(
                f"url {self.url!r} is plain http: use https:// or set allow_plain_http = true"
            )
        return self

    def applies_to(self, route_names: list[str], model: str) -> bool:
        """Whether a job of ``model``, made by ``route_names``, is announced here."""
        routes_ok = not self.routes or any(route in self.routes for route in route_names)
        return routes_ok and (not self.models or model in self.models)


class WebhookNotification(NotificationBase):
    """``kind = "webhook"``: a JSON document POSTed to ``url``, signed with HMAC-SHA256
    in ``signature_header`` when a secret is given (from an environment variable or a
    file, never from the config file itself)."""

    kind: Literal["webhook"]
    secret_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    secret_file: Path | None = None
    signature_header: str = Field(default="X-Signature-256", pattern=r"^[A-Za-z0-9-]+$")

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookNotification:
        if self.secret_env is not None and self.secret_file is not None:
            raise ValueError("give at most one of secret_env, secret_file")
        return self


class FhirNotification(NotificationBase):
    """``kind = "fhir"``: a FHIR R4 DiagnosticReport with an Observation per finding,
    sent to the server's base ``url`` as one transaction Bundle (``post =
    "transaction"``) or resource by resource (``"individual"``)."""

    kind: Literal["fhir"]
    post: Literal["transaction", "individual"] = "transaction"


Notification = Annotated[WebhookNotification | FhirNotification, Field(discriminator="kind")]


class NodeConfig(_Section):
    """The whole config file. ``source`` is the file it was read from."""

    node: NodeSection = NodeSection()
    security: SecuritySection = SecuritySection()
    peers: list[Peer] = []
    completion: CompletionSection = CompletionSection()
    models: list[ModelConfig] = []
    routes: list[RouteConfig] = []
    worker: WorkerSection = WorkerSection()
    drift: DriftSection = DriftSection()
    delivery: DeliverySection = DeliverySection()
    results: ResultsSection = ResultsSection()
    retention: RetentionSection = RetentionSection()
    metrics: MetricsSection = MetricsSection()
    audit: AuditSection = AuditSection()
    dicomweb: DicomwebSection = DicomwebSection()
    notifications: list[Notification] = []

    def peer(self, name: str) -> PeerConfig | DicomwebPeerConfig:
        """The peer called ``name``; ``KeyError`` naming it otherwise."""
        for peer in self.peers:
            if peer.name == name:
                return peer
        raise KeyError(f"no peer named {name!r} in the config")

    def model(self, name: str) -> ModelConfig:
        """The model called ``name``; ``KeyError`` naming it otherwise."""
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(f"no model named {name!r} in the config")


# Tagged unions whose tag pydantic puts into an error's location, by the key above them.
_UNION_TAGS = {
    "peers": {"dimse", "dicomweb"},
    "auth": {"none", "basic", "bearer", "client_certificate"},
    "notifications": {"webhook", "fhir"},
}


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    key, previous = "", None
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in {"value", "list", "regex", "range", "str", "int", "float"} and path.count(
            ".match."
        ):
            continue  # pydantic names the union branch it tried; not a key of the file
        elif part in _UNION_TAGS.get(key, ()) and (previous == key or isinstance(previous, int)):
            continue  # ...and the tag of a peer kind or an auth type
        else:
            path += f".{part}" if path else part
            key = part
        previous = part
    return path


def _step_cycle(route: RouteConfig, start: StepConfig) -> list[str] | None:
    """The step names from ``start`` back round to it, when following ``upstream`` loops."""
    path = [start.step_name]
    step: StepConfig | None = start
    while step is not None and step.upstream is not None:
        if step.upstream == start.step_name:
            return [*path, start.step_name]
        if step.upstream in path:
            return None  # a loop further up: reported for the steps in it
        path.append(step.upstream)
        step = route.step_named(step.upstream)
    return None


def _step_problems(index: int, route: RouteConfig, model_names: set[str]) -> list[tuple[str, str]]:
    """Unknown models and steps, steps after several steps, cycles, a model run twice."""
    problems: list[tuple[str, str]] = []
    names = [step.step_name for step in route.steps]
    seen_models = set(route.models)
    for j, step in enumerate(route.steps):
        key = f"routes[{index}].steps[{j}]"
        if step.step_name in names[:j]:
            problems.append((f"{key}.name", f"duplicate step name {step.step_name!r}"))
        candidates = (
            [("model", step.model or "")]
            if step.select is None
            else [(f"select.models.{label}", m) for label, m in step.select.models.items()]
        )
        for field_key, model in candidates:
            if model not in model_names:
                problems.append((f"{key}.{field_key}", f"no model named {model!r}"))
            elif model in seen_models and step.select is None:
                problems.append(
                    (
                        f"{key}.{field_key}",
                        f"model {model!r} already runs in this route: each model runs once "
                        "per route (its results' UIDs are per model and series)",
                    )
                )
        seen_models.update(model for _, model in candidates)
        references = step.references()
        for field_key, name in references:
            if name not in names:
                problems.append((f"{key}.{field_key}", f"no step named {name!r} in this route"))
        if len({name for _, name in references}) > 1:
            named = " and ".join(repr(name) for name in dict.fromkeys(n for _, n in references))
            problems.append((key, f"names steps {named}: a step runs after one earlier step"))
        cycle = _step_cycle(route, step)
        if cycle is not None:
            problems.append((f"{key}.{references[0][0]}", "cycle: " + " -> ".join(cycle)))
    return problems


def _later_step_elsewhere(routes: list[RouteConfig]) -> list[tuple[str, str]]:
    """A model that runs as a later step of a chain and also in another route: both would
    write results with the same UIDs (per model and series), one replacing the other."""
    places: list[tuple[int, str, str, bool]] = []  # route index, key, model, later step
    for index, route in enumerate(routes):
        key = f"routes[{index}]"
        places.extend((index, f"{key}.models[{i}]", m, False) for i, m in enumerate(route.models))
        for j, step in enumerate(route.steps):
            later = step.upstream is not None
            places.extend((index, f"{key}.steps[{j}]", m, later) for m in step.candidate_models())
    problems = []
    for index, key, model, later in places:
        others = [k for i, k, m, _ in places if m == model and i != index]
        if later and others:
            problems.append(
                (
                    key,
                    f"model {model!r} runs here after another step and also at {others[0]}: "
                    "results' UIDs are per model and series, so one run would replace the "
                    "other's in the archive (package the model twice, under two names)",
                )
            )
    return problems


def _cross_reference_problems(config: NodeConfig) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    sections: dict[str, list[str]] = {
        "peers": [p.name for p in config.peers],
        "models": [m.name for m in config.models],
        "routes": [r.name for r in config.routes],
    }
    for section, names in sections.items():
        for index, name in enumerate(names):
            if name in names[:index]:
                problems.append((f"{section}[{index}].name", f"duplicate name {name!r}"))
    peer_names, model_names = set(sections["peers"]), set(sections["models"])
    for index, route in enumerate(config.routes):
        for i, model in enumerate(route.models):
            if model not in model_names:
                problems.append((f"routes[{index}].models[{i}]", f"no model named {model!r}"))
        problems.extend(_step_problems(index, route, model_names))
        for key in ("destinations", "shadow_destinations"):
            for i, dest in enumerate(getattr(route, key)):
                if dest not in peer_names:
                    problems.append((f"routes[{index}].{key}[{i}]", f"no peer named {dest!r}"))
    problems.extend(_later_step_elsewhere(config.routes))
    query_peer = config.completion.query_peer
    if query_peer is not None and query_peer not in peer_names:
        problems.append(("completion.query_peer", f"no peer named {query_peer!r}"))
    return problems + _notification_problems(config)


def _notification_problems(config: NodeConfig) -> list[tuple[str, str]]:
    """Duplicate notification names, and filters naming routes or models that do not exist."""
    problems: list[tuple[str, str]] = []
    known = {"routes": {r.name for r in config.routes}, "models": {m.name for m in config.models}}
    names: list[str] = []
    for index, entry in enumerate(config.notifications):
        if entry.name in names:
            problems.append((f"notifications[{index}].name", f"duplicate name {entry.name!r}"))
        names.append(entry.name)
        for key, present in known.items():
            for i, name in enumerate(getattr(entry, key)):
                if name not in present:
                    problems.append(
                        (f"notifications[{index}].{key}[{i}]", f"no {key[:-1]} named {name!r}")
                    )
    return problems


def _resolved(section: _SectionT, resolve: Callable[[Path], Path]) -> _SectionT:
    """``section`` with every path in it (nested sections included) made absolute."""
    update: dict[str, Any] = {}
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, Path):
            update[name] = resolve(value)
        elif isinstance(value, _Section):
            update[name] = _resolved(value, resolve)
    return section.model_copy(update=update)


def _resolve_paths(data: dict[str, Any], base: Path) -> NodeConfig:
    config = NodeConfig.model_validate(data)

    def resolve(path: Path) -> Path:
        return path if path.is_absolute() else (base / path).resolve()

    node = config.node.model_copy(update={"storage_dir": resolve(config.node.storage_dir)})
    url = config.node.database_url
    prefix = "sqlite:///"
    if url.startswith(prefix) and url != "sqlite:///:memory:":
        url = prefix + str(resolve(Path(url[len(prefix) :])))
    node = node.model_copy(update={"database_url": url})
    return config.model_copy(
        update={
            "node": node,
            "models": [_resolved(m, resolve) for m in config.models],
            "peers": [_resolved(p, resolve) for p in config.peers],
            "security": _resolved(config.security, resolve),
            "dicomweb": _resolved(config.dicomweb, resolve),
            "audit": _resolved(config.audit, resolve),
            "notifications": [_resolved(n, resolve) for n in config.notifications],
        }
    )


def parse_config(data: dict[str, Any], source: str, base: Path) -> NodeConfig:
    """Validate an already-parsed TOML document.

    Raises
    ------
    ConfigError
        Listing every problem with its key path and the offending value.
    """
    try:
        config = _resolve_paths(data, base)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] not in {"extra_forbidden"} and "input" in error:
                message += f" (got {error['input']!r})"
            elif error["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append((_key_path(error["loc"]) or "(top level)", message))
        raise ConfigError(source, _dedupe(problems)) from None
    problems = _cross_reference_problems(config)
    if problems:
        raise ConfigError(source, problems)
    return config


def _dedupe(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(problems))


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate the config file at ``path``.

    Raises
    ------
    ConfigError
        When the file is missing, is not TOML, or has any invalid key or value.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), [("(file)", "no such file")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [("(file)", f"not valid TOML: {exc}")]) from None
    return parse_config(data, str(path), path.resolve().parent)
