"""Config of ``jobs.score``: which corpus, which model and heads, and the accept/abstain decision."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from jobs.schemas import ModelStageConfig
from ue.config import ConfigModel
from ue.config.models import Split

MAX_BLOCK_MB = 64
"""Blocks travel through Ray's object store whole; keep them well under its 128 MiB block target."""


class CorpusConfig(ConfigModel):
    """The files to score and how they are cut into blocks (``ue.corpus``)."""

    paths: list[str] = Field(
        description="JSONL/CSV/Parquet/text files, folders or local globs; local paths ($VARS expanded) or "
        "pyarrow filesystem URIs (s3://, gs://, file://)."
    )
    format: Literal["auto", "jsonl", "csv", "parquet", "text"] = Field(
        "auto", description="auto picks by suffix (.jsonl/.json/.ndjson, .csv, .parquet, .txt); text = one per line."
    )
    text_column: str = Field("text", description="Field holding the text to classify.")
    text_pair_column: str | None = Field(None, description="Field holding the second text of a pair task.")
    id_column: str | None = Field(
        None, description="Field holding the row id; None derives <file name>:<line> (file names must differ)."
    )
    rows_per_block: int = Field(4096, description="Rows per block at most; a block is one output shard and the "
                                "unit of resume.")
    block_mb: float = Field(16, description=f"Bytes per block at most, in MiB (text formats; <= {MAX_BLOCK_MB}).")
    max_length: int = Field(128, description="Tokens per row at most; longer rows are truncated and flagged.")
    max_chars: int = Field(100_000, description="Characters per text kept before tokenising (bounds memory).")

    @field_validator("paths")
    @classmethod
    def _some_paths(cls, value: list[str]) -> list[str]:
        if not value or not all(p.strip() for p in value):
            raise ValueError("must list at least one file, folder or glob, e.g. [${UE_DATA_DIR}/sst2/test.jsonl]")
        return value

    @field_validator("rows_per_block")
    @classmethod
    def _positive_rows(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be >= 1; 1,000-10,000 rows suit most corpora")
        return value

    @field_validator("block_mb")
    @classmethod
    def _block_size(cls, value: float) -> float:
        if not 0 < value <= MAX_BLOCK_MB:
            raise ValueError(f"must be in (0, {MAX_BLOCK_MB}] MiB; 16 suits most corpora")
        return value

    @field_validator("max_length")
    @classmethod
    def _long_enough(cls, value: int) -> int:
        if value < 8:
            raise ValueError("must be >= 8; 128 suits sentences, 512 documents")
        return value

    @model_validator(mode="after")
    def _chars_cover_tokens(self) -> CorpusConfig:
        if self.max_chars < self.max_length:
            raise ValueError(f"max_chars ({self.max_chars}) must be >= max_length ({self.max_length}) or every "
                             "long row loses tokens before the tokenizer sees them")
        return self


class AcceptConfig(ConfigModel):
    """accept = u_<head> <= t, t chosen on labelled calibration features so that the error rate of the
    accepted rows is <= target_error with probability >= 1 - delta (ue.selective)."""

    head: str | None = Field(None, description="Which of `heads` decides; None = the first one listed.")
    target_error: float = Field(0.05, description="Bound on the error rate of accepted rows, in (0, 1).")
    delta: float = Field(0.1, description="Allowed probability that the bound fails, in (0, 1).")
    min_accepted: int = Field(
        1, description="Fewest calibration rows the first tested threshold accepts. With 1, one error among the "
        "most certain few rows ends the search at 'accept nothing'; 100 makes that first test sturdier. Any "
        "value fixed in advance keeps the guarantee (ue.selective.select_threshold).",
    )
    split: Split = Field("val", description="Cached features the threshold is calibrated on (features/split=...).")

    @field_validator("min_accepted")
    @classmethod
    def _some_rows(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be >= 1; 100 suits a calibration split of about 1,000 rows")
        return value

    @field_validator("target_error", "delta")
    @classmethod
    def _probability(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            raise ValueError("must be in (0, 1), e.g. target_error 0.05 and delta 0.1")
        return value


class Config(ModelStageConfig):
    """Score a corpus with the model (+ adapter) and heads of one run; shards go to <run>/scores/."""

    corpus: CorpusConfig
    heads: list[str] = Field(
        default_factory=lambda: ["msp", "entropy"],
        description="Heads whose score becomes a u_<name> column: folders under <run>/heads/ (fit_heads' "
        "names), or msp / entropy, which need no fitting. [] scores with the model alone.",
    )
    ood: str | None = Field(None, description="A fitted head under <run>/heads/ (e.g. mahalanobis) whose score "
                            "becomes the `ood` column; None leaves it out.")
    accept: AcceptConfig | None = Field(None, description="The accept/abstain decision; None leaves `accept` out.")
    tag_names: list[str] | None = Field(None, description="Token classification: the tag names in index order "
                                        "(a dataset's labels.json), written as a `tags` column; None leaves it out.")
    read_concurrency: int = Field(2, description="Read tasks at most at once (they reserve no CPU).")

    @field_validator("heads")
    @classmethod
    def _distinct_heads(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value) or not all(v.strip() and "/" not in v for v in value):
            raise ValueError("must name each head folder once, e.g. [alien, msp]")
        return value

    @field_validator("read_concurrency")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be >= 1")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.model.task == "causal_lm":
            raise ValueError("model.task is causal_lm; corpus scoring supports sequence_classification and "
                             "token_classification")
        if self.model.task == "token_classification" and (self.corpus.text_pair_column or self.ood):
            raise ValueError("token classification scores one sentence per row (split into words at whitespace): "
                             "unset corpus.text_pair_column and ood")
        if self.tag_names is not None and self.model.task != "token_classification":
            raise ValueError("tag_names is for token classification; unset it")
        if self.accept is not None:
            if not self.heads:
                raise ValueError("accept needs a head to decide with: list one in heads, e.g. [msp]")
            if self.accept.head is not None and self.accept.head not in self.heads:
                raise ValueError(f"accept.head {self.accept.head!r} is not in heads ({', '.join(self.heads)}); "
                                 "add it to heads or pick one of them")
        return self

    @property
    def decision(self) -> str | None:
        """The head whose score decides ``accept`` (None without accept)."""
        if self.accept is None:
            return None
        return self.accept.head or self.heads[0]
