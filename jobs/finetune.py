"""Stage ``finetune``: LoRA fine-tuning on Ray Train, with plain DDP or a DeepSpeed ZeRO config.

    python -m jobs.finetune --config jobs/configs/finetune/minilm_sst2.yaml run.run_id=demo train.epochs=2

The recipe:

1. Setup. Read train/val and check everything a worker would otherwise trip over minutes later:
   columns, labels against the number of classes, the loss and its params, the LoRA target modules
   (on a weightless "meta" copy of the model, so a 13B check costs nothing) and the DeepSpeed JSON,
   whose "auto" values are filled from this config. A bad config fails here, naming the key.
2. Train. Train/val go to the workers as Ray Data streams (``get_dataset_shard``, tokenised inside
   the worker); each worker runs :func:`jobs._train_loop.train_loop`, which evaluates on val and
   checkpoints every epoch. Ray keeps the best checkpoints by ``train.select_metric`` plus the
   latest, restarts failed workers from the latest (``train.max_failures``), and a rerun of the same
   run with the same training config resumes from it. Each epoch's metrics reach TensorBoard
   (``finetune/tensorboard``) and stdout through a Ray Train callback.
3. Outputs. The best checkpoint's adapter (PEFT format) and classification module are copied into
   ``finetune/``, next to ``metrics.json``; ``run_stage`` adds ``config.yaml`` and the manifest entry.
   With ``lora: null`` every weight is trained and ``finetune/adapter/`` holds the whole model and its
   tokenizer instead (``from_pretrained`` loads it; ``extract`` with ``adapter: finetune`` does).
"""

from __future__ import annotations

import inspect
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
import ray.data
import torch
from ray.train import CheckpointConfig, FailureConfig, Result, ScalingConfig
from ray.train import RunConfig as RayRunConfig
from ray.train.torch import TorchTrainer
from ray.util.queue import Queue

from jobs._common import init_ray, job_main, run_stage
from jobs._progress import EpochLogger, printing
from jobs._train_loop import ADAPTER_DIR, STATE_FILE, LoopInputs, build_loss, train_loop
from jobs.schemas.finetune import METRIC_MODE, Config, deepspeed_path
from ue.artifacts import RunLayout, atomic_directory, atomic_write_bytes, atomic_write_json
from ue.config import ConfigError, ConfigIssue, RunConfig, config_hash
from ue.data import check_labels, load_dataset_split, num_labels
from ue.losses import LOSSES, ua_clm_mixed
from ue.models import AUTO_CLASSES, apply_lora, resolve_model_path

STAGE = "finetune"
SOURCE = "finetune config"
"""The ``source`` of the config problems found by the checks that need the data or the model."""
COLUMNS = {
    "sequence_classification": ("text", "text_pair", "label"),
    "token_classification": ("tokens", "tags"),
    "causal_lm": ("prompt", "answer"),
}
"""The columns each task's workers read (``uncertainty`` too, where the data has it)."""
SET_BY_JOB = frozenset({"shift", "beta"})
"""Loss keywords the job sets itself (token classification is unshifted; beta follows the schedule)."""
CLASSIFIER_FILES = ("classifier.safetensors", "classifier.json")
MUST_MATCH = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
              "bf16.enabled", "fp16.enabled")
"""DeepSpeed keys whose explicit values must agree with this config (the loop feeds the batches)."""


def run(cfg: Config) -> dict[str, Any]:
    """Fine-tune under the run manifest; skipped when the stage is done with the same config."""
    return run_stage(STAGE, cfg, lambda layout: finetune(cfg, layout))


def finetune(cfg: Config, layout: RunLayout) -> dict[str, Any]:
    """The stage body: setup, train on Ray, export the best checkpoint. Returns the manifest outputs."""
    # -- 1. setup: every check that does not need a worker ----------------------------------------
    train, val = read_split(cfg, "train"), read_split(cfg, "val")
    n_labels = check_data(cfg, train, val)
    check_loss(cfg, n_labels, train)
    hidden_size = check_model(cfg, n_labels)
    steps_per_epoch = plan_steps(cfg, train.num_rows, val.num_rows)
    ds_config = deepspeed_config(cfg, hidden_size=hidden_size) if cfg.deepspeed else None
    inputs = LoopInputs(cfg=cfg, num_labels=n_labels, steps_per_epoch=steps_per_epoch, deepspeed=ds_config)
    storage, name = checkpoint_storage(cfg, layout)

    # -- 2. train on Ray -------------------------------------------------------------------------
    started_ray = init_ray()
    try:
        result = fit(inputs, train, val, storage=storage, name=name,
                     tensorboard=layout.finetune_dir / "tensorboard")
    finally:
        if started_ray:
            ray.shutdown()

    # -- 3. outputs ------------------------------------------------------------------------------
    return export(result, cfg, layout, rows={"train": train.num_rows, "val": val.num_rows})


def read_split(cfg: Config, split: str) -> pa.Table:
    """One split with only the columns the workers read (Ray Data then carries nothing else)."""
    d = cfg.data
    table = load_dataset_split(d.name, split, splits=d.splits, task=d.task, columns=d.columns,
                               max_rows=(d.max_rows or {}).get(split), seed=d.seed, val_from_train=d.val_from_train)
    keep = [c for c in (*COLUMNS[d.task], "uncertainty") if c in table.column_names]
    return table.select(keep)


def check_data(cfg: Config, train: pa.Table, val: pa.Table) -> int | None:
    """The number of classes (None for causal LM), after checking every label of both splits."""
    task = cfg.data.task
    if task == "causal_lm":
        return None
    n = cfg.model.num_labels or num_labels([train, val], task, name=cfg.data.name)
    for split, table in (("train", train), ("val", val)):
        check_labels(table, task, n, source=f"{cfg.data.name} [{cfg.data.splits[split]}]")
    return n


def check_loss(cfg: Config, n_labels: int | None, train: pa.Table) -> None:
    """Reject ``train.loss_params`` the loss does not take (every loss swallows unknown keywords, as
    it is handed the whole batch), then call it once on a tiny batch shaped like the task's so bad
    values and a missing ``uncertainty`` column fail now rather than in the first step."""
    loss = ua_clm_mixed if cfg.train.mix_ce else LOSSES[cfg.train.loss]
    accepted = sorted(name for name, p in inspect.signature(loss).parameters.items()
                      if p.kind is p.KEYWORD_ONLY and name not in SET_BY_JOB)
    unknown = sorted(set(cfg.train.loss_params) - set(accepted))
    if unknown:
        raise ConfigError([ConfigIssue(SOURCE, "train.loss_params", f"{cfg.train.loss} takes no {unknown}",
                                       cfg.train.loss_params, f"allowed: {', '.join(accepted) or 'none'}")])
    classes = n_labels or 4
    logits = torch.zeros(2, classes) if cfg.data.task == "sequence_classification" else torch.zeros(2, 3, classes)
    batch: dict[str, torch.Tensor] = {"labels": torch.zeros(logits.shape[:-1], dtype=torch.long)}
    if "uncertainty" in train.column_names:
        batch["uncertainty"] = torch.full((2,), 0.5)
    try:
        build_loss(cfg, total_steps=1)(logits, batch, 0)
    except ValueError as e:
        key = "train.loss_params" if cfg.train.loss_params else "train.loss"
        value = cfg.train.loss_params if cfg.train.loss_params else cfg.train.loss
        raise ConfigError([ConfigIssue(SOURCE, key, str(e), value)]) from None


def check_model(cfg: Config, n_labels: int | None) -> int:
    """Build the model on the meta device (no weights) and apply LoRA to it (unless ``lora`` is null);
    returns the hidden size.

    Raises:
        ConfigError: the model's config cannot be loaded.
        ValueError: a LoRA target module does not exist (``apply_lora`` names the key).
    """
    import transformers

    m = cfg.model
    try:
        config = transformers.AutoConfig.from_pretrained(resolve_model_path(m.name_or_path),
                                                         trust_remote_code=m.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError([ConfigIssue(SOURCE, "model.name_or_path", f"cannot load the model's config ({e})",
                                       m.name_or_path)]) from None
    if n_labels is not None:
        config.num_labels = n_labels
    with torch.device("meta"):
        model = getattr(transformers, AUTO_CLASSES[m.task]).from_config(config, trust_remote_code=m.trust_remote_code)
        if cfg.lora is not None:
            apply_lora(model, task=m.task, r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                       target_modules=cfg.lora.target_modules, bias=cfg.lora.bias)
    return int(config.hidden_size)


def plan_steps(cfg: Config, train_rows: int, val_rows: int) -> int:
    """Optimiser steps per epoch. Ray Data gives every worker ``rows // workers`` rows, so all
    workers run the same number of batches (DDP and ZeRO need that)."""
    workers = cfg.resources.num_workers
    if min(train_rows, val_rows) < workers:
        issue = ConfigIssue(SOURCE, "resources.num_workers", f"more workers than rows (train {train_rows}, "
                            f"val {val_rows})", workers, "use fewer workers or more data")
        raise ConfigError([issue])
    micro_batches = math.ceil(train_rows // workers / cfg.train.batch_size)
    return math.ceil(micro_batches / cfg.train.grad_accum)


def deepspeed_config(cfg: Config, *, hidden_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON as written, with each "auto" value filled from this config (as the HF
    Trainer does) and the batch and precision settings checked against it."""
    path = deepspeed_path(cfg.deepspeed)
    t, h = cfg.train, hidden_size
    fills = {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.batch_size * t.grad_accum * cfg.resources.num_workers,
        "gradient_clipping": t.max_grad_norm,
        "bf16.enabled": cfg.model.dtype == "bfloat16",
        "fp16.enabled": cfg.model.dtype == "float16",
        "zero_optimization.reduce_bucket_size": h * h,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * h * h),
        "zero_optimization.stage3_param_persistence_threshold": 10 * h,
    }
    return _fill_auto(json.loads(path.read_text(encoding="utf-8")), fills, source=path.name)


def _fill_auto(tree: dict[str, Any], fills: dict[str, Any], *, source: str, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = prefix + key
        if isinstance(value, dict):
            out[key] = _fill_auto(value, fills, source=source, prefix=path + ".")
        elif value == "auto" and path not in fills:
            raise ConfigError([ConfigIssue(SOURCE, "deepspeed", f"{source}: no value to fill in for \"auto\" at "
                                           f"{path}", hint=f"fillable: {', '.join(fills)}")])
        elif value != "auto" and path in MUST_MATCH and value != fills[path]:
            raise ConfigError([ConfigIssue(SOURCE, "deepspeed", f"{source}: {path} is {value!r} but this config "
                                           f"gives {fills[path]!r}", hint="set it to \"auto\"")])
        else:
            out[key] = fills[path] if value == "auto" else value
    return out


def checkpoint_storage(cfg: Config, layout: RunLayout) -> tuple[Path, str]:
    """Ray Train's storage folder and run name. The name is the hash of the training config (the
    ``run`` section left out), so a rerun with the same config resumes from its latest checkpoint,
    while a changed config or ``run.force`` starts over (the stale checkpoints are removed)."""
    root = (layout.finetune_dir / "ray").resolve()
    name = config_hash(cfg.model_copy(update={"run": RunConfig()}))
    if root.is_dir():
        for stale in root.iterdir():
            if stale.name != name or cfg.run.force:
                shutil.rmtree(stale)
    return root, name


def fit(inputs: LoopInputs, train: pa.Table, val: pa.Table, *, storage: Path, name: str,
        tensorboard: Path) -> Result:
    """Run the ``TorchTrainer`` to the end (progress lines printed as epochs finish)."""
    cfg, res = inputs.cfg, inputs.cfg.resources
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.use_gpu else {})}
    lines = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"inputs": inputs},
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu, resources_per_worker=per_worker),
        run_config=RayRunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.train.keep_checkpoints, checkpoint_score_attribute=cfg.train.select_metric,
                checkpoint_score_order=METRIC_MODE[cfg.train.select_metric],
            ),
            callbacks=[EpochLogger(logdir=tensorboard, lines=lines, epochs=cfg.train.epochs)],
        ),
        datasets={"train": ray.data.from_arrow(train), "val": ray.data.from_arrow(val)},
    )
    with printing(lines):
        return trainer.fit()


def export(result: Result, cfg: Config, layout: RunLayout, *, rows: dict[str, int]) -> dict[str, Any]:
    """Copy the best checkpoint's adapter and classification module into ``finetune/`` and write
    ``metrics.json`` (the best epoch, every epoch, steps, resumes). Returns the manifest outputs."""
    metric = cfg.train.select_metric
    best = result.get_best_checkpoint(metric=metric, mode=METRIC_MODE[metric])
    with result.checkpoint.as_directory() as latest:
        state = json.loads((Path(latest) / STATE_FILE).read_text(encoding="utf-8"))
    with best.as_directory() as directory:
        source = Path(directory)
        with atomic_directory(layout.adapter_dir) as tmp:
            shutil.copytree(source / ADAPTER_DIR, tmp, dirs_exist_ok=True)
        for file in CLASSIFIER_FILES:
            if (source / file).is_file():
                atomic_write_bytes(layout.finetune_dir / file, (source / file).read_bytes())
        best_epoch = json.loads((source / STATE_FILE).read_text(encoding="utf-8"))["history"][-1]
    metrics = {
        "task": cfg.model.task, "loss": cfg.train.loss, "select_metric": metric, "best": best_epoch,
        "epochs": state["history"], "steps": state["step"], "resumed_at_step": state["resumed_at_step"],
        "rows": rows, "workers": cfg.resources.num_workers, "deepspeed": cfg.deepspeed,
        "full_parameters": cfg.lora is None,
    }
    atomic_write_json(layout.finetune_dir / "metrics.json", metrics)
    has_classifier = (layout.finetune_dir / CLASSIFIER_FILES[0]).is_file()
    return {
        "adapter": str(layout.adapter_dir),
        "classifier": str(layout.finetune_dir) if has_classifier else None,
        "metrics": str(layout.finetune_dir / "metrics.json"),
        "best_epoch": best_epoch["epoch"],
        metric: best_epoch[metric],
    }


if __name__ == "__main__":
    job_main(Config, run)
