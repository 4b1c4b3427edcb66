"""Config of ``jobs.fit_heads``: which heads to fit on which split, and how they are evaluated."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ue.config import ConfigModel, HeadSpec, RunConfig

DEFAULT_HEADS = ("msp", "entropy", "temperature", "mahalanobis", "relative_mahalanobis", "adue", "alien")
"""Every registered head at its default settings (a test keeps this equal to ``ue.heads.HEADS``)."""


def _share_of_val(value: float) -> float:
    if not 0.0 < value < 1.0:
        raise ValueError("must be in (0, 1); 0.5 splits val in halves")
    return value


class HeadEntry(HeadSpec):
    """A head to fit; ``save_as`` lets one run hold several settings of the same head."""

    save_as: str | None = Field(
        None, description="Folder under heads/ and row name; default: the head name (<name>_<calibrate> "
        "when calibrated).")
    calibrate: Literal["beta", "platt", "isotonic"] | None = Field(
        None, description="Map the head's score to P(error) on a held-out share of val (ue.heads.Calibrated): "
        "beta (for scores in [0, 1]: msp, temperature, alien, adue), platt (any score) or isotonic; beta and "
        "platt keep the ranking.")
    calibrate_fraction: float = Field(0.5, description="Share of val rows that fit the calibration map; the "
                                      "rest selects the head's epochs.")

    @field_validator("calibrate_fraction")
    @classmethod
    def _calibration_share(cls, value: float) -> float:
        return _share_of_val(value)

    @field_validator("save_as")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or value.startswith(".")):
            raise ValueError("must be a plain folder name, e.g. alien_bce_only")
        return value

    @property
    def key(self) -> str:
        return self.save_as or (f"{self.name}_{self.calibrate}" if self.calibrate else self.name)


class Config(ConfigModel):
    """Fit every head on the cached features, then evaluate each on val and test."""

    run: RunConfig = Field(default_factory=RunConfig)
    heads: list[HeadEntry] = Field(
        default_factory=lambda: [HeadEntry(name=name) for name in DEFAULT_HEADS],
        description="Heads to fit, each {name, params, save_as}; default: every head at its defaults.",
    )
    fit_split: Literal["train", "calibration"] = Field(
        "train",
        description="Rows the heads learn from: train (the ALIEN/AdUE authors' setting) or calibration, "
        "a held-out share of val (calibration_fraction of its rows, by id); the rest of val then selects.",
    )
    calibration_fraction: float = Field(0.5, description="Share of val rows used as the calibration split.")
    calibration_seed: int = Field(0, description="Seed of the id hash that assigns val rows to calibration.")
    eval_splits: list[Literal["val", "test"]] = Field(
        default_factory=lambda: ["val", "test"], description="Splits every head is evaluated on."
    )
    score_columns: list[str] = Field(
        default_factory=list,
        description="Cached task columns evaluated as scores next to the heads (higher = more uncertain), "
        "e.g. token_entropy_mean and perplexity for QA.",
    )
    cpus_per_head: int = Field(1, description="CPUs (and torch threads) of each head's fitting task.")
    ece_bins: int = Field(15, description="Equal-width bins of the ECE.")

    @field_validator("heads")
    @classmethod
    def _unique_keys(cls, value: list[HeadEntry]) -> list[HeadEntry]:
        if not value:
            raise ValueError("must list at least one head, e.g. [{name: alien}]")
        keys = [h.key for h in value]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"head(s) {', '.join(repeated)} listed twice; give each a distinct save_as")
        return value

    @field_validator("calibration_fraction")
    @classmethod
    def _proper_fraction(cls, value: float) -> float:
        return _share_of_val(value)

    @field_validator("cpus_per_head", "ece_bins")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be >= 1")
        return value

    @field_validator("eval_splits")
    @classmethod
    def _distinct_splits(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("must name val and/or test, each once")
        return value
