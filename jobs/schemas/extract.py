"""Config of ``jobs.extract``: which model reads which splits, and how the actor pool runs it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from jobs.schemas import ModelStageConfig
from ue.config import ConfigModel, DataConfig
from ue.config.models import Split


class GenerationConfig(ConfigModel):
    """Greedy answering of causal-LM QA rows (UA-CLM evaluation, arXiv 2412.02904)."""

    max_new_tokens: int = Field(32, description="Answer length cap, in tokens.")
    stop_strings: list[str] = Field(
        default_factory=lambda: ["\n"], description="An answer also ends at these (besides EOS)."
    )
    rouge_threshold: float = Field(0.3, description="correct = ROUGE-L(answer, reference) > threshold.")

    @field_validator("max_new_tokens")
    @classmethod
    def _some_tokens(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be >= 1; short QA answers need 16-32")
        return value

    @field_validator("rouge_threshold")
    @classmethod
    def _in_unit_interval(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError("must be in [0, 1); the UA-CLM paper uses 0.3")
        return value


class Config(ModelStageConfig):
    """One model (+ optional LoRA adapter) over the data splits, features written to the run."""

    data: DataConfig
    splits: list[Split] = Field(default_factory=lambda: ["train", "val", "test"], description="Splits to cache.")
    rows_per_part: int = Field(
        2048, description="Input rows per Parquet part file; a part is the unit of resume after a crash."
    )
    padding_side: Literal["left", "right"] | None = Field(
        None, description="Override the tokenizer's padding side (causal LM QA always pads left)."
    )
    generation: GenerationConfig = Field(default_factory=GenerationConfig)

    @field_validator("splits")
    @classmethod
    def _distinct_splits(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("must list each split at most once, e.g. [train, val, test]")
        return value

    @field_validator("rows_per_part")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be >= 1")
        return value

    @model_validator(mode="after")
    def _same_task(self) -> Config:
        if self.data.task != self.model.task:
            raise ValueError(
                f"data.task ({self.data.task}) and model.task ({self.model.task}) differ; set both to the same task"
            )
        return self
