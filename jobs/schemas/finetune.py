"""Config of the fine-tuning stage, ``python -m jobs.finetune`` (pydantic only: no torch, no Ray).

A YAML file under ``jobs/configs/finetune/`` fills :class:`Config`; every key has a default except
``data`` and ``model``. What can be checked without the model or the data is checked here, so
``ue validate`` rejects it in well under a second; the rest (labels, LoRA targets, loss params) is
checked by the job before any Ray worker starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, ValidationInfo, field_validator

from ue.config import ConfigModel, DataConfig, LoraConfig, ModelConfig, RayResources, RunConfig
from ue.registry import did_you_mean

LossName = Literal["ce", "ua_clm", "ual"]
"""The names registered in ``ue.losses.LOSSES`` (a test keeps the two in sync)."""
LOSS_NAMES: tuple[str, ...] = get_args(LossName)

SelectMetric = Literal["val_loss", "val_accuracy"]
METRIC_MODE = {"val_loss": "min", "val_accuracy": "max"}
"""Whether a smaller or a larger value of each selection metric is better."""

DEEPSPEED_DIR = Path(__file__).resolve().parents[1] / "configs" / "deepspeed"
"""The shipped ZeRO configs; ``deepspeed: zero3`` names ``zero3.json`` there."""


def deepspeed_path(value: str) -> Path:
    """The JSON file that ``deepspeed: <value>`` names: a shipped config's stem or a file path."""
    shipped = DEEPSPEED_DIR / f"{value}.json"
    return shipped if shipped.is_file() else Path(value).expanduser()


def _at_least(value: float, low: float, fix: str) -> Any:
    if value < low:
        raise ValueError(f"must be >= {low}; {fix}")
    return value


class TrainSettings(ConfigModel):
    """Loss, optimiser, schedule, checkpointing and fault tolerance of one fine-tuning run."""

    loss: LossName = Field("ce", description="Fine-tuning loss from ue.losses.LOSSES.")
    loss_params: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the loss, e.g. {eps_min: 0.0, eps_max: 0.1} for ual or "
        "{reduction_scope: sequence} for ua_clm; checked against the loss before training.",
    )
    mix_ce: bool = Field(
        False, description="ua_clm only: train on CE + beta * UA-CLM with the paper's beta schedule "
        "(0.2 for the first 20% of steps, then 0.8) instead of UA-CLM alone.",
    )
    beta_early: float = Field(0.2, description="mix_ce only: weight of the UA-CLM term for the first "
                              "beta_switch fraction of the optimiser steps (the paper: 0.2).")
    beta_late: float = Field(0.8, description="mix_ce only: weight of the UA-CLM term afterwards (the paper: 0.8).")
    beta_switch: float = Field(0.2, description="mix_ce only: fraction of the steps after which beta_late applies.")
    epochs: int = Field(3, description="Passes over the training split.")
    batch_size: int = Field(16, description="Rows per micro-batch on each worker.")
    grad_accum: int = Field(1, description="Micro-batches per optimiser step.")
    lr: float = Field(5e-4, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.0, description="Fraction of the optimiser steps spent warming up, in [0, 1).")
    schedule: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Learning-rate decay after the warm-up."
    )
    group_by_length: bool = Field(
        True, description="Sort rows by length within windows of 16 micro-batches (micro-batches still come "
        "in random order) so each is padded less, as HF's group_by_length; about halves the tokens computed "
        "on short, varied sentences.",
    )
    max_grad_norm: float = Field(1.0, description="Gradient-norm clipping; 0 turns it off.")
    seed: int = Field(0, description="Seeds LoRA init, dropout and the per-epoch shuffle.")
    select_metric: SelectMetric = Field(
        "val_loss", description="Validation metric that picks the exported checkpoint (loss: lower is "
        "better, accuracy: higher). The test split never takes part.",
    )
    keep_checkpoints: int = Field(2, description="Best checkpoints kept on disk; the latest is always kept too.")
    max_failures: int = Field(
        1, description="Times Ray Train restarts the workers from the latest checkpoint after a failure; "
        "-1 retries forever.",
    )

    @field_validator("mix_ce")
    @classmethod
    def _mix_needs_ua_clm(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("loss") != "ua_clm":
            raise ValueError("applies only to loss ua_clm; set train.loss=ua_clm or remove it")
        return value

    @field_validator("beta_switch")
    @classmethod
    def _switch_fraction(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError("must be in [0, 1]; 0.2 switches after the first 20% of steps")
        return value

    @field_validator("epochs", "batch_size", "grad_accum", "keep_checkpoints")
    @classmethod
    def _positive(cls, value: int) -> int:
        return _at_least(value, 1, "use 1 for the smallest setting")

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be > 0; LoRA fine-tuning usually uses 1e-4 to 1e-3")
        return value

    @field_validator("weight_decay", "max_grad_norm", "beta_early", "beta_late")
    @classmethod
    def _non_negative(cls, value: float) -> float:
        return _at_least(value, 0.0, "0 turns it off")

    @field_validator("warmup_ratio")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError("must be in [0, 1); 0.03 warms up over the first 3% of steps")
        return value

    @field_validator("seed")
    @classmethod
    def _non_negative_seed(cls, value: int) -> int:
        return _at_least(value, 0, "numpy accepts only non-negative seeds")

    @field_validator("max_failures")
    @classmethod
    def _failures(cls, value: int) -> int:
        return _at_least(value, -1, "0 disables restarts, -1 retries forever")


class Config(ConfigModel):
    """``jobs.finetune``: data, backbone, LoRA, training, Ray resources, DeepSpeed and the run directory."""

    data: DataConfig
    model: ModelConfig
    lora: LoraConfig | None = Field(
        default_factory=LoraConfig, description="LoRA adapter settings; null trains every weight of the model "
        "(full-parameter training, e.g. a small decoder trained from scratch) and the stage exports the whole "
        "model (weights + tokenizer, loadable by from_pretrained) where it would export the adapter.",
    )
    train: TrainSettings = TrainSettings()
    resources: RayResources = RayResources()
    deepspeed: str | None = Field(
        None, description="DeepSpeed JSON (a shipped stem: zero2, zero3, or a file path), passed through "
        "unchanged except that its \"auto\" values are filled from this config; None trains with DDP.",
    )
    run: RunConfig = RunConfig()

    @field_validator("model")
    @classmethod
    def _same_task(cls, value: ModelConfig, info: ValidationInfo) -> ModelConfig:
        data = info.data.get("data")
        if data is not None and value.task != data.task:
            raise ValueError(
                f"model.task {value.task!r} differs from data.task {data.task!r}; set both to the same task"
            )
        return value

    @field_validator("deepspeed")
    @classmethod
    def _readable_deepspeed(cls, value: str | None) -> str | None:
        if value is None:
            return value
        path = deepspeed_path(value)
        shipped = sorted(p.stem for p in DEEPSPEED_DIR.glob("*.json"))
        if not path.is_file():
            close = did_you_mean(value, shipped)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"no such DeepSpeed JSON; name a shipped one ({', '.join(shipped)}) or a file{hint}")
        try:
            ds = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a readable JSON file ({e})") from None
        if not isinstance(ds, dict):
            raise ValueError(f"{path} must hold a JSON object")
        clash = [key for key in ("optimizer", "scheduler") if key in ds]
        if clash:
            raise ValueError(
                f"{path} defines {' and '.join(clash)}; remove it: the job builds AdamW and the schedule "
                "from train.* so DDP and DeepSpeed runs train the same way"
            )
        return value
