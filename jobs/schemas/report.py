"""Config of the report stage (``jobs.report``): which split, which heads, how many bins."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ue.config import ConfigModel, RunConfig


class Config(ConfigModel):
    """``python -m jobs.report run.run_id=demo split=test``."""

    run: RunConfig = Field(default_factory=RunConfig)
    split: Literal["val", "test"] = Field("test", description="Cached split to evaluate; test for final numbers.")
    heads: list[str] | None = Field(None, description="Saved heads (names under heads/) to include; None: all.")
    n_bins: int = Field(15, description="Equal-width bins of ECE and the reliability plot.")
    title: str | None = Field(None, description="Report title; default 'Run <run_id>: <split> split'.")

    @field_validator("n_bins")
    @classmethod
    def _enough_bins(cls, value: int) -> int:
        if value < 2:
            raise ValueError("must be >= 2; 10-15 is usual")
        return value

    @field_validator("heads")
    @classmethod
    def _some_heads(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("must name at least one head, or be left out to include every saved head")
        return value
