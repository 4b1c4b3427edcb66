"""Typed config models the stages build on (DESIGN.md "Input data", METHODS.md).

Each model checks itself on creation and says how to fix a bad value. Library classes never see
these objects: builder functions turn them into plain keyword arguments.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar, get_args

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ue.config._base import ConfigModel

Task = Literal["sequence_classification", "token_classification", "causal_lm"]

Column = Literal[
    "id", "text", "text_pair", "label", "tokens", "tags", "prompt", "answer", "context", "uncertainty"
]
"""Our column names; ``DataConfig.columns`` maps them to a file's own names."""
Split = Literal["train", "val", "test"]

COLUMN_NAMES: tuple[str, ...] = get_args(Column)
SPLIT_NAMES: tuple[str, ...] = get_args(Split)
DEFAULT_SPLITS = {"train": "train", "val": "validation", "test": "test"}

N = TypeVar("N", int, float)


def _at_least(value: N, low: float, fix: str) -> N:
    if value < low:
        raise ValueError(f"must be >= {low}; {fix}")
    return value


def _not_blank(value: str, fix: str) -> str:
    if not value.strip():
        raise ValueError(f"must not be empty; {fix}")
    return value


class DataConfig(ConfigModel):
    """Where a dataset comes from and how its columns and splits map onto ours."""

    name: str = Field(
        description="HF Hub name (glue/sst2), a dataset folder under $UE_DATA_DIR, "
        "or a .jsonl/.csv/.parquet path."
    )
    task: Task = Field("sequence_classification", description="What the rows are labelled for.")
    columns: dict[Column, str] = Field(
        default_factory=dict, description="Our column name -> the file's; names left out are read as is."
    )
    splits: dict[Split, str] = Field(
        default_factory=lambda: dict(DEFAULT_SPLITS),
        description="Our split (train/val/test) -> file stem or HF split; those left out keep the default.",
    )
    max_rows: dict[Split, int] | None = Field(
        None, description="Rows to read at most per split (for smoke runs); None reads everything."
    )
    max_length: int = Field(128, description="Tokenizer truncation length, in tokens.")
    seed: int = Field(0, description="Seed for shuffling, subsampling and the val carve-out.")
    val_from_train: float | None = Field(
        None,
        description="Carve val out of the train file: this share of its rows, chosen by a seeded hash of the "
        "row id (the same rows in every stage and run); splits.val is then not read. For datasets that ship "
        "only train/test (TREC, AG News, IMDB, ...).",
    )

    @field_validator("name")
    @classmethod
    def _name_given(cls, value: str) -> str:
        return _not_blank(value, "name an HF Hub dataset (glue/sst2), a folder under $UE_DATA_DIR or a file")

    @field_validator("columns")
    @classmethod
    def _columns_named(cls, value: dict[str, str]) -> dict[str, str]:
        for ours, theirs in value.items():
            _not_blank(theirs, f"map {ours!r} to the file's column name or leave it out")
        return value

    @field_validator("splits", mode="before")
    @classmethod
    def _fill_default_splits(cls, value: Any) -> Any:
        # An override like `data.splits.val=dev` must not drop train and test.
        return {**DEFAULT_SPLITS, **value} if isinstance(value, dict) else value

    @field_validator("splits")
    @classmethod
    def _splits_named(cls, value: dict[str, str]) -> dict[str, str]:
        for ours, stem in value.items():
            _not_blank(stem, f"give the file stem or HF split that holds {ours!r}")
        return value

    @field_validator("max_rows")
    @classmethod
    def _positive_caps(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        for count in (value or {}).values():
            _at_least(count, 1, "leave max_rows unset to read every row")
        return value

    @field_validator("val_from_train")
    @classmethod
    def _carve_fraction(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 < value < 1.0:
            raise ValueError("must be a fraction in (0, 1), e.g. 0.1; leave it unset to read splits.val")
        return value

    @field_validator("max_length")
    @classmethod
    def _long_enough(cls, value: int) -> int:
        return _at_least(value, 8, "128 suits sentences, 512 or more suits documents")

    @field_validator("seed")
    @classmethod
    def _non_negative_seed(cls, value: int) -> int:
        return _at_least(value, 0, "numpy accepts only non-negative seeds")


class ModelConfig(ConfigModel):
    """Which backbone to load and how."""

    name_or_path: str = Field(description="HF Hub model name or a local folder loadable by from_pretrained.")
    task: Task = Field("sequence_classification", description="Which task head the backbone gets.")
    num_labels: int | None = Field(
        None, description="Classes (or tags); None takes them from the data. Not used for causal_lm."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weight dtype; bfloat16 for 7B-13B models on GPU."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    trust_remote_code: bool = Field(False, description="Run model code shipped with the checkpoint.")
    allow_new_weights: bool = Field(
        False, description="Scoring without an adapter: accept weights the checkpoint lacks (e.g. the classifier of "
        "a base encoder), initialised at random from init_seed. Off: such a model is refused.")
    init_seed: int = Field(0, description="Seed of weights the checkpoint lacks, the same in every worker.")

    @field_validator("name_or_path")
    @classmethod
    def _name_given(cls, value: str) -> str:
        return _not_blank(value, "name an HF Hub model or a local checkpoint folder")

    @field_validator("num_labels")
    @classmethod
    def _num_labels_fit_task(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None:
            return value
        if info.data.get("task") == "causal_lm":
            raise ValueError("applies only to classification tasks; remove it for causal_lm")
        return _at_least(value, 2, "a binary task has 2 labels; leave it unset to take it from the data")


class LoraConfig(ConfigModel):
    """LoRA adapter settings, passed to PEFT's LoraConfig."""

    r: int = Field(8, description="Adapter rank.")
    alpha: int = Field(16, description="lora_alpha: the adapter update is scaled by alpha / r.")
    dropout: float = Field(0.0, description="Dropout on the adapter input, in [0, 1).")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj"],
        description="Modules to adapt; the default names Llama/Qwen2 attention, encoders use their own "
        "(BERT/RoBERTa: query, key, value).",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases are trained.")

    @field_validator("r")
    @classmethod
    def _positive_rank(cls, value: int) -> int:
        return _at_least(value, 1, "LoRA ranks are usually 8-64")

    @field_validator("alpha")
    @classmethod
    def _positive_alpha(cls, value: int) -> int:
        return _at_least(value, 1, "alpha = 2 * r is the usual choice")

    @field_validator("dropout")
    @classmethod
    def _dropout_is_probability(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError("must be in [0, 1); 0.05-0.1 is typical, 0 turns it off")
        return value

    @field_validator("target_modules")
    @classmethod
    def _some_modules(cls, value: list[str]) -> list[str]:
        if not value or not all(name.strip() for name in value):
            raise ValueError("must list at least one module name, e.g. [q_proj, v_proj] or [query, value]")
        return value


class HeadSpec(ConfigModel):
    """One uncertainty head to fit: a registered head name and its keyword params."""

    name: str = Field(description="Registered head name (ue.heads.HEADS), e.g. alien or adue.")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the head.")

    @field_validator("name")
    @classmethod
    def _name_given(cls, value: str) -> str:
        return _not_blank(value, "name a registered head, e.g. alien")


class RayResources(ConfigModel):
    """Ray workers for one stage; ``use_gpu`` without a count means one GPU per worker (as in Ray)."""

    num_workers: int = Field(1, description="Workers (actors or training processes).")
    use_gpu: bool = Field(False, description="Give each worker GPUs.")
    cpus_per_worker: float = Field(1, description="CPUs reserved per worker; fractions allowed.")
    gpus_per_worker: float = Field(0, description="GPUs per worker; fractions share a GPU. Needs use_gpu.")

    @model_validator(mode="before")
    @classmethod
    def _one_gpu_by_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("use_gpu") is True and "gpus_per_worker" not in data:
            return {**data, "gpus_per_worker": 1}
        return data

    @field_validator("num_workers")
    @classmethod
    def _some_workers(cls, value: int) -> int:
        return _at_least(value, 1, "use 1 for a single worker")

    @field_validator("cpus_per_worker")
    @classmethod
    def _non_negative_cpus(cls, value: float) -> float:
        return _at_least(value, 0, "0 lets GPU workers skip CPU reservation")

    @field_validator("gpus_per_worker")
    @classmethod
    def _gpus_match_use_gpu(cls, value: float, info: ValidationInfo) -> float:
        _at_least(value, 0, "use 0 to run on CPU")
        use_gpu = info.data.get("use_gpu")
        if use_gpu is False and value > 0:
            raise ValueError("needs use_gpu: true (or set gpus_per_worker: 0 to run on CPU)")
        if use_gpu and value == 0:
            raise ValueError("must be > 0 when use_gpu is true (0.5 shares one GPU between two workers)")
        return value


class RunConfig(ConfigModel):
    """Which run directory a stage reads and writes: ``<root>/<run_id>/`` (DESIGN.md, "Run directory")."""

    root: str = Field("runs", description="Folder (or pyarrow filesystem URI) holding all runs.")
    run_id: str = Field("default", description="Name of this run's directory under root.")
    force: bool = Field(False, description="Redo the stage even if the manifest marks it done.")

    @field_validator("run_id")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError("must be a plain folder name, e.g. sst2-minilm-seed0")
        return value
