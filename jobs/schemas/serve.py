"""Config of ``jobs.serve`` (``ue serve <run>``): which heads and accept decision, the replicas, the
request batching, the HTTP address and the limits a request must keep."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from jobs.schemas.score import AcceptConfig
from ue.config import ConfigModel, ModelConfig, RunConfig

LOOPBACK = "127.0.0.1"


class HttpConfig(ConfigModel):
    """Where Ray Serve's HTTP proxy listens."""

    host: str = Field(LOOPBACK, description="Address to bind; 0.0.0.0 exposes the endpoint to the network.")
    port: int = Field(8000, description="TCP port.")

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError("must be in [1, 65535], e.g. 8000")
        return value


class ReplicaConfig(ConfigModel):
    """Model replicas (Ray Serve replicas), each holding one ``ue.Scorer``."""

    num_replicas: int | None = Field(None, description="Replicas; None = one per GPU of the cluster with use_gpu, "
                                     "else 1.")
    use_gpu: bool = Field(False, description="One GPU per replica.")
    cpus_per_replica: float = Field(1, description="CPUs reserved per replica (also its torch threads).")

    @field_validator("num_replicas")
    @classmethod
    def _some(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be >= 1 (or null for one per GPU)")
        return value

    @field_validator("cpus_per_replica")
    @classmethod
    def _cpus(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be >= 0")
        return value


class Config(ConfigModel):
    """Serve a run's model + heads over HTTP: POST {"texts": [...]} -> {"rows": [...]} with the columns
    of jobs.score (pred, confidence, u_<head>, accept, truncated)."""

    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig | None = Field(None, description="The backbone; null = the model the run's cached features "
                                      "(features/features.json) come from.")
    adapter: str | None = Field("auto", description="PEFT adapter folder; auto = the one the features were extracted "
                                "with (else <run>/finetune/adapter if present); null = the bare model.")
    heads: list[str] = Field(default_factory=lambda: ["msp", "entropy"],
                             description="Heads whose score becomes a u_<name> column (as in jobs.score).")
    ood: str | None = Field(None, description="A fitted head under <run>/heads/ for the `ood` column.")
    accept: AcceptConfig | None = Field(None, description="The accept/abstain decision; None leaves `accept` out.")
    tag_names: list[str] | None = Field(None, description="Token classification: tag names, for a `tags` column.")
    max_length: int = Field(128, description="Tokens per text at most; longer texts are cut and flagged truncated.")
    batch_size: int = Field(16, description="Rows per forward pass. A batch of requests is sorted by length and cut "
                            "into forward passes of this size, so a small one wastes little padding on CPU; raise it "
                            "on a GPU.")
    max_batch_size: int = Field(16, description="Requests that @serve.batch joins into one scoring call at most.")
    batch_wait_timeout_s: float = Field(0.005, description="How long a batch waits for more requests.")
    max_items: int = Field(256, description="Texts per request at most (413 above).")
    max_text_chars: int = Field(20_000, description="Characters per text at most (413 above).")
    max_body_mb: float = Field(8, description="Request body size at most, in MiB (413 above).")
    access_log: bool = Field(False, description="Serve's access log line per request (method, route, status, "
                             "latency; never the body); off saves work on every request.")
    replicas: ReplicaConfig = Field(default_factory=ReplicaConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    app_name: str = Field("ueray", description="Ray Serve application name.")

    @field_validator("max_length", "batch_size", "max_batch_size", "max_items", "max_text_chars")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be >= 1")
        return value

    @field_validator("batch_wait_timeout_s", "max_body_mb")
    @classmethod
    def _non_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be >= 0")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.accept is not None:
            if not self.heads:
                raise ValueError("accept needs a head to decide with: list one in heads, e.g. [msp]")
            if self.accept.head is not None and self.accept.head not in self.heads:
                raise ValueError(f"accept.head {self.accept.head!r} is not in heads ({', '.join(self.heads)})")
        return self
