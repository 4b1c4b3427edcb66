"""What every Ray Train worker of ``jobs.finetune`` runs: build the LoRA model, train, evaluate, checkpoint.

The worker reads top to bottom: setup (tokenizer, model + LoRA, AdamW, schedule, engine), resume
from the checkpoint Ray hands over (a rerun of the same run, or a restart after a failure), then
the epoch loop (train, evaluate on val, checkpoint + ``ray.train.report``). The engine is DeepSpeed
when the driver passes a DeepSpeed config and Ray's DDP wrapper otherwise; both offer the same calls,
so the loop never branches on it.

A checkpoint directory holds ``adapter/`` (PEFT format, with the classification module as a saved
module), ``classifier.safetensors`` + ``classifier.json`` (classification tasks), the optimiser,
schedule and step state (``optimizer.pt`` for DDP, DeepSpeed's per-rank files under ``deepspeed/``),
and ``state.json`` (epochs and steps done, the metrics of every epoch so far).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from jobs.schemas.finetune import Config
from ue.heads.modules import classifier_from_model, save_classifier
from ue.losses import IGNORE_INDEX, LOSSES, ua_clm_beta_schedule, ua_clm_mixed
from ue.models import apply_lora, load_model, load_tokenizer
from ue.tokenize import collate, encode_causal, encode_classification, encode_tokens

STATE_FILE = "state.json"
ADAPTER_DIR = "adapter"
OPTIMIZER_FILE = "optimizer.pt"
DEEPSPEED_TAG = "deepspeed"
SHUFFLE_BUFFER_ROWS = 10_000
GROUP_BATCHES = 16
"""Micro-batches per window whose rows are sorted by length together (``train.group_by_length``)."""
LENGTH_COLUMNS = ("text", "text_pair", "tokens", "prompt", "answer")
CLASSIFICATION_MODULES = frozenset({"score", "classifier", "pooler", "pre_classifier"})
"""Names of the modules that turn the hidden state into logits (BERT's pooler included)."""

LossFn = Callable[[Tensor, dict[str, Tensor], int], Tensor]
"""``loss(logits, batch, step) -> scalar``, built by :func:`build_loss`."""
MakeBatch = Callable[[dict[str, np.ndarray]], dict[str, Tensor]]
"""Raw Ray Data rows -> model inputs on the worker's device."""
T = TypeVar("T")


@dataclass(frozen=True)
class LoopInputs:
    """What the driver hands every worker: the validated config and what it derived from the data."""

    cfg: Config
    num_labels: int | None
    steps_per_epoch: int
    deepspeed: dict[str, Any] | None
    """The DeepSpeed config with its "auto" values filled, or None to train with DDP."""


@dataclass
class TrainState:
    """Progress saved in every checkpoint."""

    epoch: int = 0
    """Epochs completed."""
    step: int = 0
    """Optimiser steps taken."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """The metrics reported at the end of each completed epoch."""
    resumed_at_step: list[int] = field(default_factory=list)
    """The step of each checkpoint this run was resumed from."""


def train_loop(config: dict[str, LoopInputs]) -> None:
    """The ``train_loop_per_worker`` of the job's ``TorchTrainer``; ``config["inputs"]`` says what to train."""
    inputs = config["inputs"]
    cfg, task = inputs.cfg, inputs.cfg.model.task
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    total_steps = inputs.steps_per_epoch * cfg.train.epochs

    # -- setup ------------------------------------------------------------------------------------
    # ZeRO-3 must be announced to transformers before from_pretrained so weights load partitioned;
    # the object has to stay alive while the model is in use.
    _zero3_config = _zero3_announcement(inputs.deepspeed)
    tokenizer = load_tokenizer(cfg.model.name_or_path, padding_side="right",
                               trust_remote_code=cfg.model.trust_remote_code)
    torch.manual_seed(cfg.train.seed)  # the same LoRA and classifier init on every worker
    model = load_model(
        cfg.model.name_or_path, task=task, num_labels=inputs.num_labels, dtype=cfg.model.dtype,
        pad_token_id=tokenizer.pad_token_id, gradient_checkpointing=cfg.model.gradient_checkpointing,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    if cfg.lora is not None:
        model = apply_lora(model, task=task, r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                           target_modules=cfg.lora.target_modules, bias=cfg.lora.bias)
    optimizer, scheduler = build_optimizer(model, cfg, total_steps)
    if inputs.deepspeed is not None:
        engine: DDPBackend | DeepSpeedBackend = DeepSpeedBackend(model, optimizer, scheduler, inputs.deepspeed)
    else:
        engine = DDPBackend(model, optimizer, scheduler, grad_accum=cfg.train.grad_accum,
                            max_grad_norm=cfg.train.max_grad_norm)
    loss_fn = build_loss(cfg, total_steps)

    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            engine.load(Path(directory))
            state = TrainState(**json.loads((Path(directory) / STATE_FILE).read_text(encoding="utf-8")))
        state.resumed_at_step.append(state.step)

    def make_batch(rows: dict[str, np.ndarray]) -> dict[str, Tensor]:
        return {k: v.to(device) for k, v in encode_batch(rows, tokenizer, task, cfg.data.max_length).items()}

    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")

    # -- loop: train one epoch, evaluate, checkpoint + report ------------------------------------
    for epoch in range(state.epoch, cfg.train.epochs):
        started = time.perf_counter()
        metrics = {"epoch": epoch + 1, **train_epoch(engine, train_shard, make_batch, loss_fn, state, cfg,
                                                     epoch=epoch, rank=rank, device=device)}
        metrics.update(evaluate(engine, val_shard, make_batch, task, cfg.train.batch_size, device))
        metrics.update(step=state.step, lr=engine.lr, epoch_seconds=time.perf_counter() - started)
        state.epoch = epoch + 1
        state.history.append(metrics)
        save_and_report(engine, model, state, metrics, rank=rank, task=task,
                        tokenizer=tokenizer if cfg.lora is None else None)


def train_epoch(
    engine: DDPBackend | DeepSpeedBackend, shard: Any, make_batch: MakeBatch, loss_fn: LossFn,
    state: TrainState, cfg: Config, *,
    epoch: int, rank: int, device: torch.device,
) -> dict[str, float]:
    """One pass over this worker's shard; advances ``state.step``. Returns ``train_loss`` (mean over
    micro-batches and workers) and ``train_tokens_per_s`` (non-pad tokens of all workers per second)."""
    started = time.perf_counter()
    engine.train()
    # Dropout differs per epoch and worker yet repeats exactly when a run resumes.
    torch.manual_seed(int(np.random.SeedSequence([cfg.train.seed, epoch, rank]).generate_state(1)[0]))
    windows = shard.iter_batches(
        batch_size=cfg.train.batch_size * GROUP_BATCHES, batch_format="numpy",
        local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS, local_shuffle_seed=cfg.train.seed + epoch,
    )
    batches = micro_batches(windows, cfg.train.batch_size, by_length=cfg.train.group_by_length,
                            rng=np.random.default_rng([cfg.train.seed, epoch]))
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, micro-batches, tokens
    for i, (rows, last) in enumerate(_flag_last(batches)):
        batch = make_batch(rows)
        # The epoch's last micro-batch always steps, so no gradient carries over into the next epoch.
        boundary = last or (i + 1) % cfg.train.grad_accum == 0
        loss = engine.micro_step(batch, lambda logits, b=batch: loss_fn(logits, b, state.step), boundary)
        state.step += int(boundary)
        totals += torch.stack([loss.double(), totals.new_tensor(1.0), batch["attention_mask"].sum().double()])
    totals = _sum_over_workers(totals)
    return {"train_loss": (totals[0] / totals[1]).item(),
            "train_tokens_per_s": totals[2].item() / (time.perf_counter() - started)}


def build_optimizer(model: nn.Module, cfg: Config, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the trainable (LoRA + classification module) parameters and its LR schedule."""
    from transformers import get_scheduler

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    name = "constant_with_warmup" if cfg.train.schedule == "constant" else cfg.train.schedule
    warmup = round(cfg.train.warmup_ratio * total_steps)
    return optimizer, get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def build_loss(cfg: Config, total_steps: int) -> LossFn:
    """``loss(logits, batch, step)`` for the configured loss: its params bound, token classification
    unshifted, and the paper's beta schedule for the mixed UA-CLM objective."""
    params: dict[str, Any] = dict(cfg.train.loss_params)
    if cfg.model.task == "token_classification":
        params["shift"] = False
    base = LOSSES[cfg.train.loss]

    def loss(logits: Tensor, batch: dict[str, Tensor], step: int) -> Tensor:
        extra = {"uncertainty": batch["uncertainty"]} if "uncertainty" in batch else {}
        if cfg.train.mix_ce:
            t = cfg.train
            beta = ua_clm_beta_schedule(min(step, total_steps - 1), total_steps, early=t.beta_early,
                                        late=t.beta_late, switch=t.beta_switch)
            return ua_clm_mixed(logits, batch["labels"], beta=beta, **params, **extra)
        return base(logits, batch["labels"], **params, **extra)

    return loss


def encode_batch(rows: dict[str, np.ndarray], tokenizer: Any, task: str, max_length: int) -> dict[str, Tensor]:
    """A Ray Data batch of raw rows -> padded model inputs, ``labels`` and (for UAL) ``uncertainty``."""
    if task == "sequence_classification":
        pairs = rows["text_pair"].tolist() if "text_pair" in rows else None
        encoded = encode_classification(tokenizer, rows["text"].tolist(), pairs, max_length=max_length)
    elif task == "token_classification":
        encoded = encode_tokens(tokenizer, rows["tokens"].tolist(), rows["tags"].tolist(), max_length=max_length)
    else:
        encoded = encode_causal(tokenizer, rows["prompt"].tolist(), rows["answer"].tolist(), max_length=max_length)
    batch = collate(encoded, pad_id=tokenizer.pad_token_id, padding_side="right")
    if task == "sequence_classification":
        batch["labels"] = torch.tensor(rows["label"], dtype=torch.long)
    if "uncertainty" in rows:
        batch["uncertainty"] = torch.tensor(rows["uncertainty"], dtype=torch.float32)
    return batch


@torch.no_grad()
def evaluate(
    engine: DDPBackend | DeepSpeedBackend, shard: Any, make_batch: MakeBatch, task: str, batch_size: int,
    device: torch.device,
) -> dict[str, float]:
    """``val_loss`` (cross entropy, whatever the training loss, so runs with different losses compare)
    and ``val_accuracy`` (token accuracy on the answer for causal LM), over every worker's shard."""
    engine.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # nll sum, correct, scored positions
    windows = shard.iter_batches(batch_size=batch_size * GROUP_BATCHES, batch_format="numpy")
    for rows in micro_batches(windows, batch_size, by_length=True):
        batch = make_batch(rows)
        logits, labels = scored(engine.forward(batch), batch["labels"], task)
        nll = F.cross_entropy(logits.float(), labels, reduction="sum")
        totals += torch.stack([nll.double(), (logits.argmax(-1) == labels).sum().double(),
                               totals.new_tensor(labels.numel())])
    totals = _sum_over_workers(totals)
    return {"val_loss": (totals[0] / totals[2]).item(), "val_accuracy": (totals[1] / totals[2]).item()}


def micro_batches(
    windows: Iterable[dict[str, np.ndarray]], batch_size: int, *, by_length: bool,
    rng: np.random.Generator | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Cut windows of rows into micro-batches of ``batch_size``, each worker getting
    ``ceil(rows / batch_size)`` of them.

    ``by_length`` sorts each window by length first (HF's ``group_by_length``), so a micro-batch is
    padded to similar lengths: on SST-2 that halves the tokens computed. ``rng`` then shuffles the
    order of a window's micro-batches, so training does not see them shortest first.
    """
    for rows in windows:
        n = len(next(iter(rows.values())))
        order = np.argsort(_approximate_lengths(rows, n), kind="stable") if by_length else np.arange(n)
        starts = np.arange(0, n, batch_size)
        for start in rng.permutation(starts) if rng is not None else starts:
            pick = order[start:start + batch_size]
            yield {column: values[pick] for column, values in rows.items()}


def _approximate_lengths(rows: dict[str, np.ndarray], n: int) -> np.ndarray:
    """Characters of each row's text columns, a cheap stand-in for its token count."""
    lengths = np.zeros(n)
    for column in LENGTH_COLUMNS:
        if column in rows:
            lengths += [sum(map(len, value)) if column == "tokens" else len(value) for value in rows[column]]
    return lengths


def scored(logits: Tensor, labels: Tensor, task: str) -> tuple[Tensor, Tensor]:
    """The scored positions as ``(M, C)`` logits and ``(M,)`` labels (causal LM: shifted by one)."""
    if task == "causal_lm":
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != IGNORE_INDEX
    return logits[keep], labels[keep]


def save_and_report(
    engine: DDPBackend | DeepSpeedBackend, model: nn.Module, state: TrainState, metrics: dict[str, Any],
    *, rank: int, task: str, tokenizer: Any = None,
) -> None:
    """Write this worker's part of the checkpoint and report it with the epoch's metrics (``tokenizer``:
    saved beside a fully trained model, so its folder loads on its own).

    Every worker reports its own directory and Ray merges them, which is how DeepSpeed's per-rank
    optimiser partitions end up in one checkpoint.
    """
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        engine.save(directory, rank=rank)
        save_adapter(model, directory, rank=rank, task=task)
        if rank == 0 and tokenizer is not None:
            tokenizer.save_pretrained(directory / ADAPTER_DIR)
        if rank == 0:
            (directory / STATE_FILE).write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"epoch_{state.epoch:03d}")


def save_adapter(model: nn.Module, directory: Path, *, rank: int, task: str) -> None:
    """Rank 0 writes the PEFT adapter (loadable by ``PeftModel.from_pretrained``), or the whole model
    when it has no LoRA, and the classification module. Under ZeRO-3 every worker takes part in
    gathering the weights first."""
    params = [p for name, p in model.named_parameters()
              if p.requires_grad or CLASSIFICATION_MODULES.intersection(name.split("."))]
    with _gathered(params):
        if rank == 0:
            model.save_pretrained(directory / ADAPTER_DIR)
            if task != "causal_lm":
                save_classifier(classifier_from_model(model), directory)


class DDPBackend:
    """Plain torch: Ray's ``prepare_model`` (device + DDP), gradient accumulation, clipping, schedule."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, *,
                 grad_accum: int, max_grad_norm: float) -> None:
        self.peft_model = model
        self.module = ray.train.torch.prepare_model(model)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.grad_accum, self.max_grad_norm = grad_accum, max_grad_norm

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def micro_step(self, batch: dict[str, Tensor], loss_of: Callable[[Tensor], Tensor], boundary: bool) -> Tensor:
        """Forward + backward of one micro-batch; an optimiser step when ``boundary``. Returns the loss."""
        # DDP all-reduces gradients on every backward unless told not to; only the last micro-batch
        # of an accumulation group needs it.
        no_sync = getattr(self.module, "no_sync", None)
        with nullcontext() if boundary or no_sync is None else no_sync():
            loss = loss_of(self.forward(batch))
            (loss / self.grad_accum).backward()
        if boundary:
            if self.max_grad_norm > 0:
                nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                         self.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def save(self, directory: Path, *, rank: int) -> None:
        if rank == 0:  # DDP keeps identical optimiser state on every worker
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                       directory / OPTIMIZER_FILE)

    def load(self, directory: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        adapter = directory / ADAPTER_DIR / "adapter_model.safetensors"
        if adapter.is_file():
            set_peft_model_state_dict(self.peft_model, load_file(str(adapter), device=str(self.device)))
        else:  # full-parameter training saved the whole model
            weights = load_file(str(directory / ADAPTER_DIR / "model.safetensors"), device=str(self.device))
            missing, unexpected = self.peft_model.load_state_dict(weights, strict=False)
            # save_pretrained leaves out a weight tied to another (lm_head tied to the embeddings)
            if unexpected or (missing and not getattr(self.peft_model.config, "tie_word_embeddings", False)):
                raise RuntimeError(f"{directory}: the saved model does not match (missing {sorted(missing)}, "
                                   f"unexpected {sorted(unexpected)})")
        state = torch.load(directory / OPTIMIZER_FILE, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    @property
    def device(self) -> torch.device:
        return next(self.peft_model.parameters()).device


class DeepSpeedBackend:
    """A DeepSpeed engine (ZeRO stage from its config) around the same model, optimiser and schedule."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 config: dict[str, Any]) -> None:
        import deepspeed

        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=config)

    @property
    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def train(self) -> None:
        self.engine.train()

    def eval(self) -> None:
        self.engine.eval()

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def micro_step(self, batch: dict[str, Tensor], loss_of: Callable[[Tensor], Tensor], boundary: bool) -> Tensor:
        """DeepSpeed scales the loss by the accumulation, reduces, clips and steps at the boundary."""
        self.engine.set_gradient_accumulation_boundary(boundary)
        loss = loss_of(self.forward(batch))
        self.engine.backward(loss)
        self.engine.step()
        return loss.detach()

    def save(self, directory: Path, *, rank: int) -> None:
        # Frozen base weights are excluded: they come from the base checkpoint, not from us.
        self.engine.save_checkpoint(str(directory), tag=DEEPSPEED_TAG, exclude_frozen_parameters=True,
                                    save_latest=False)

    def load(self, directory: Path) -> None:
        self.engine.load_checkpoint(str(directory), tag=DEEPSPEED_TAG, load_module_strict=False)


def _zero3_announcement(config: dict[str, Any] | None) -> Any:
    if config is None or config.get("zero_optimization", {}).get("stage") != 3:
        return None
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    # DeepSpeed must see Ray's process group first, or it checks the batch sizes against 1 worker.
    deepspeed.init_distributed()
    return HfDeepSpeedConfig(config)


def _gathered(params: list[nn.Parameter]) -> Any:
    """Full copies of ZeRO-3 partitioned parameters inside the block; a no-op for anything else."""
    if not any(hasattr(p, "ds_id") for p in params):
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def _sum_over_workers(values: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
    return values


def _flag_last(items: Iterable[T]) -> Iterator[tuple[T, bool]]:
    """Each item with whether it is the last one (one item of look-ahead)."""
    iterator = iter(items)
    try:
        previous = next(iterator)
    except StopIteration:
        return
    for item in iterator:
        yield previous, False
        previous = item
    yield previous, True
