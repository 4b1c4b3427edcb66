"""Benchmark of the finetune stage: training tokens/s of ``jobs.finetune`` (1 Ray Train worker, plain
torch and DeepSpeed ZeRO-2) next to a plain single-process PEFT training loop, in the same run.

Model and data: the real all-MiniLM-L6-v2 encoder with LoRA (r 8, alpha 16, dropout 0.1, query +
value) as a 2-label classifier; the first ``--rows`` SST-2 training sentences from ``$UE_DATA_DIR``
(the rows ``jobs/configs/finetune/minilm_sst2.yaml`` trains on), batches of 32, max_length 64,
AdamW 2e-3 with 10% linear warm-up, clipping at 1.0, one epoch, float32 on this machine's CPUs.

- job: ``jobs.finetune.run`` with 1 worker holding every CPU. Its figure is the
  ``train_tokens_per_s`` it reports for the epoch: non-pad tokens over the wall time of the
  training pass, Ray Data streaming and tokenisation inside the worker included (worker start,
  model loading, validation and checkpointing are not). Measured with the default length grouping
  and with ``train.group_by_length=false`` (the same random batches as the plain loop).
- plain loop: one process, ``AutoModelForSequenceClassification`` + ``peft.get_peft_model``,
  rows shuffled with seed 0, each batch tokenised with padding to its longest row, forward +
  backward + clip + AdamW step + schedule; non-pad tokens over the wall time of the loop.

Every variant runs ``--repeats`` times, interleaved; medians are reported.

    .venv/bin/python benchmarks/finetune.py            # 1,000 sentences, 3 repeats (a few minutes)
    .venv/bin/python benchmarks/finetune.py --quick    # 256 sentences, one repeat
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("UE_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "finetune" / "minilm_sst2.yaml"
VAL_ROWS = 64
"""Validation rows per epoch: the job evaluates every epoch, outside the measured training pass."""


def job_config(root: Path, rows: int, *, deepspeed: str | None, group_by_length: bool) -> Any:
    from jobs.schemas.finetune import Config
    from ue.config import load_config

    return load_config(Config, CONFIG, overrides=[
        f"data.max_rows.train={rows}", f"data.max_rows.val={VAL_ROWS}", "train.epochs=1",
        f"train.group_by_length={str(group_by_length).lower()}", f"resources.cpus_per_worker={os.cpu_count()}",
        f"run.root={root}", "run.run_id=bench", "run.force=true",
        *([f"deepspeed={deepspeed}"] if deepspeed else []),
    ])


def run_job(cfg: Any) -> float:
    from jobs import finetune
    from ue.artifacts import RunLayout, read_json

    finetune.run(cfg)
    metrics = read_json(RunLayout(cfg.run.root, cfg.run.run_id).finetune_dir / "metrics.json")
    return float(metrics["epochs"][0]["train_tokens_per_s"])


def run_plain(cfg: Any, texts: list[str], labels: list[int]) -> float:
    """One epoch of the textbook PEFT loop on the same rows and settings; returns non-pad tokens/s."""
    import numpy as np
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_scheduler

    from ue.models import resolve_model_path

    t, lora = cfg.train, cfg.lora
    path = resolve_model_path(cfg.model.name_or_path)
    torch.manual_seed(t.seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=lora.r, lora_alpha=lora.alpha,
                                             lora_dropout=lora.dropout, target_modules=list(lora.target_modules)))
    steps = -(-len(texts) // t.batch_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.lr,
                                  weight_decay=t.weight_decay)
    schedule = get_scheduler("linear", optimizer, num_warmup_steps=round(t.warmup_ratio * steps),
                             num_training_steps=steps)
    order = np.random.default_rng(t.seed).permutation(len(texts))
    model.train()
    tokens = 0
    started = time.perf_counter()
    for start in range(0, len(texts), t.batch_size):
        pick = order[start:start + t.batch_size]
        batch = tokenizer([texts[i] for i in pick], padding=True, truncation=True,
                          max_length=cfg.data.max_length, return_tensors="pt")
        loss = model(**batch, labels=torch.tensor([labels[i] for i in pick])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], t.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="256 sentences, one repeat")
    args = parser.parse_args()
    rows, repeats = (256, 1) if args.quick else (args.rows, args.repeats)

    import ray

    from jobs import finetune

    variants = {
        "job, plain torch (DDP wrapper)": {"deepspeed": None, "group_by_length": True},
        "job, DeepSpeed ZeRO-2": {"deepspeed": "zero2", "group_by_length": True},
        "job, plain torch, no length grouping": {"deepspeed": None, "group_by_length": False},
    }
    rates: dict[str, list[float]] = {name: [] for name in (*variants, "plain PEFT loop")}
    with tempfile.TemporaryDirectory() as tmp:
        configs = {name: job_config(Path(tmp) / "runs", rows, **v) for name, v in variants.items()}
        train = finetune.read_split(next(iter(configs.values())), "train")
        texts, labels = train.column("text").to_pylist(), train.column("label").to_pylist()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            for _ in range(repeats):
                for name, cfg in configs.items():
                    rates[name].append(run_job(cfg))
                rates["plain PEFT loop"].append(run_plain(next(iter(configs.values())), texts, labels))
        finally:
            ray.shutdown()

    plain = statistics.median(rates["plain PEFT loop"])
    print(f"finetune benchmark: MiniLM + LoRA, {rows} SST-2 sentences, batch 32, 1 epoch, {os.cpu_count()} CPUs, "
          f"median of {repeats}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"  {name:38s} {median:8.0f} tokens/s  ({', '.join(f'{v:.0f}' for v in values)})"
              f"  -> {median / plain:.2f} of the plain loop (target >= 0.9)")


if __name__ == "__main__":
    main()
