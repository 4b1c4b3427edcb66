"""Stage 2, extract: run the fine-tuned model once over every split and cache its features as Parquet.

    python -m jobs.extract --config jobs/configs/extract/minilm_sst2.yaml run.run_id=demo

Recipe:
1. Setup: find the adapter, drop a cache written by a different config, read each split's rows.
2. Cut every split into parts of ``rows_per_part`` rows; parts already on disk are skipped (resume).
3. A Ray Data actor pool, one model replica per actor (one per GPU when there are GPUs), takes one
   part per call: it tokenises it, runs it in batches of similar length and writes
   ``features/split=<split>/part-NNNNN.parquet`` atomically (schema: ``ue.feature_cache``).
4. ``features.json`` (model, adapter, C, d, classifier kind, row counts) is written last, beside the
   classification module that each actor saved, so its presence means the cache is complete.

Rows per task: sequence classification, one per text; token classification, one per word (its first
sub-token), id ``<sentence id>/<word index>``; causal LM QA, one per question with the greedy answer
judged by ROUGE-L: ``label = correct``, ``pred = 1`` (the model claims its answer), so the error
indicator ``pred != label`` is ``1 - correct``; ``logits = [log(1 - q), log q]`` with ``q = 1 /
perplexity`` (``ue.extraction.confidence_logits``); ``hidden`` = the last prompt token's state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data
import torch

from jobs._common import adapter_dir, init_ray, job_main, run_stage
from jobs.schemas import FROM_FINETUNE
from jobs.schemas.extract import Config
from ue.artifacts import RunLayout, atomic_write_json, read_json
from ue.data import check_labels, load_dataset_split, num_labels
from ue.extraction import classify_batch, confidence_logits, generate_answers, length_batches, rouge_l
from ue.feature_cache import CLASSIFIER_FILES, feature_table, part_files, part_path, write_part
from ue.heads.modules import classifier_from_model, save_classifier
from ue.models import load_adapter, load_model, load_tokenizer
from ue.tokenize import collate, encode_causal, encode_classification, encode_tokens

log = logging.getLogger("ue.jobs.extract")
INPUT_COLUMNS = {
    "sequence_classification": ("id", "text", "text_pair", "label"),
    "token_classification": ("id", "tokens", "tags"),
    "causal_lm": ("id", "prompt", "answer", "answers"),
}
CONTENT_KEYS = {"data", "model", "adapter", "rows_per_part", "padding_side", "generation"}
"""Config keys that change what the part files hold; a cache written under others is discarded."""


def run(cfg: Config) -> dict[str, Any]:
    return run_stage("extract", cfg, partial(extract, cfg))


def extract(cfg: Config, layout: RunLayout) -> dict[str, Any]:
    # 1. Setup: weights and adapter, a clean cache for this content, the rows of every split.
    model_path, adapter = _weights(cfg, layout)
    _reset_stale_cache(layout.features_dir, _content_hash(cfg), force=cfg.run.force)
    tables = {split: _read_split(cfg, split) for split in cfg.splits}
    labels = None if cfg.model.task == "causal_lm" else _num_labels(cfg, tables)

    # 2. Parts still to do (resume skips the ones on disk).
    todo = [part for split in cfg.splits for part in _missing_parts(cfg, layout, split, tables[split])]
    log.info("extract: %d part(s) to compute, %d split(s)", len(todo), len(cfg.splits))

    # 3. The actor pool writes them.
    if todo:
        started = init_ray()
        try:
            _run_actor_pool(cfg, layout, model_path, adapter, labels, todo)
        finally:
            if started:
                ray.shutdown()

    # 4. Describe the complete cache.
    meta = _describe(cfg, layout, model_path, adapter, tables)
    atomic_write_json(layout.features_meta, meta)
    return {"features": str(layout.features_dir), "rows": {s: v["rows"] for s, v in meta["splits"].items()}}


# -- setup -------------------------------------------------------------------------------------------
def _weights(cfg: Config, layout: RunLayout) -> tuple[str, str | None]:
    """The model folder and the adapter to load. A fine-tune that trained every weight (``lora: null``)
    exported the whole model where an adapter would be; ``adapter: finetune`` then loads that model."""
    exported = layout.adapter_dir
    if (cfg.adapter == FROM_FINETUNE and (exported / "config.json").is_file()
            and not (exported / "adapter_config.json").is_file()):
        return str(exported), None
    return cfg.model.name_or_path, adapter_dir(cfg.adapter, layout)


def _content_hash(cfg: Config) -> str:
    content = cfg.model_dump(mode="json", include=CONTENT_KEYS)
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def _reset_stale_cache(features_dir: Path, content_hash: str, *, force: bool) -> None:
    """Keep finished parts only when they were written for the same content (and no force)."""
    marker = features_dir / "_extract.json"
    same = marker.is_file() and read_json(marker).get("content_hash") == content_hash
    if features_dir.exists() and (force or not same):
        log.info("extract: removing the features in %s (%s)", features_dir, "force" if force else "other config")
        shutil.rmtree(features_dir)
    (features_dir / "features.json").unlink(missing_ok=True)  # written again once the cache is complete
    atomic_write_json(marker, {"content_hash": content_hash})


def _read_split(cfg: Config, split: str) -> pa.Table:
    data = cfg.data
    table = load_dataset_split(
        data.name, split, splits=data.splits, task=data.task, columns=data.columns,
        max_rows=(data.max_rows or {}).get(split), seed=data.seed, val_from_train=data.val_from_train,
    )
    return table.select([c for c in INPUT_COLUMNS[data.task] if c in table.column_names])


def _num_labels(cfg: Config, tables: dict[str, pa.Table]) -> int:
    n = cfg.model.num_labels or num_labels(list(tables.values()), cfg.data.task, name=cfg.data.name)
    for split, table in tables.items():
        check_labels(table, cfg.data.task, n, source=f"{cfg.data.name} [{split}]")
    return n


def _missing_parts(cfg: Config, layout: RunLayout, split: str, table: pa.Table) -> list[pa.Table]:
    """The parts of ``split`` that have no file yet, each tagged with where it goes."""
    size = cfg.rows_per_part
    done = {p.name for p in part_files(layout.features_split_dir(split))}
    parts = []
    for k, start in enumerate(range(0, table.num_rows, size)):
        if part_path(layout.features_split_dir(split), k).name in done:
            continue
        part = table.slice(start, size)
        n = part.num_rows
        tags = {"_split": pa.array([split] * n), "_part": pa.array([k] * n), "_rows": pa.array([n] * n)}
        for name, values in tags.items():
            part = part.append_column(name, values)
        parts.append(part)
    return parts


# -- the actor pool ----------------------------------------------------------------------------------
def _run_actor_pool(cfg: Config, layout: RunLayout, model_path: str, adapter: str | None, labels: int | None,
                    todo: list[pa.Table]) -> None:
    res = cfg.resources
    # One block per part and batch_size=None: every call of an actor receives exactly one whole part.
    written = ray.data.from_arrow(todo).map_batches(
        PartExtractor,
        batch_size=None,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=res.num_workers),
        num_cpus=res.cpus_per_worker,
        num_gpus=res.gpus_per_worker if res.use_gpu else 0,
        fn_constructor_kwargs={"cfg": cfg, "model_path": model_path, "adapter": adapter, "num_labels": labels,
                               "features_dir": str(layout.features_dir)},
    )
    for done, row in enumerate(written.iter_rows(), 1):
        _progress(done, len(todo), row)


def _progress(done: int, total: int, row: dict[str, Any]) -> None:
    log.info("extract: split=%s part %05d written (%d rows) [%d/%d]", row["split"], row["part"], row["rows"],
             done, total)


class PartExtractor:
    """One model replica: loaded once per actor, then the features of one part per call."""

    def __init__(self, *, cfg: Config, model_path: str, adapter: str | None, num_labels: int | None,
                 features_dir: str) -> None:
        torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
        self.cfg, self.features_dir = cfg, Path(features_dir)
        self.device = "cuda" if cfg.resources.use_gpu and torch.cuda.is_available() else "cpu"
        side = "left" if cfg.model.task == "causal_lm" else cfg.padding_side
        self.tokenizer = load_tokenizer(model_path, padding_side=side,
                                        trust_remote_code=cfg.model.trust_remote_code)
        torch.manual_seed(0)  # a classifier new to a base model is initialised the same in every actor
        model = load_model(model_path, task=cfg.model.task, num_labels=num_labels, dtype=cfg.model.dtype,
                           pad_token_id=self.tokenizer.pad_token_id, trust_remote_code=cfg.model.trust_remote_code)
        if adapter is not None:
            # Merging folds LoRA into the weights (faster) and keeps the trained classifier copy.
            model = load_adapter(model, adapter).merge_and_unload()
        self.model = model.eval().to(self.device)
        if cfg.model.task != "causal_lm" and not all((self.features_dir / f).is_file() for f in CLASSIFIER_FILES):
            save_classifier(classifier_from_model(self.model), self.features_dir)

    def __call__(self, block: pa.Table) -> pa.Table:
        summary = []
        for split, k in sorted(set(zip(block["_split"].to_pylist(), block["_part"].to_pylist(), strict=True))):
            rows = block.filter(pc.and_(pc.equal(block["_split"], split), pc.equal(block["_part"], k)))
            if rows.num_rows != rows["_rows"][0].as_py():  # a part must never be written from a fragment
                raise RuntimeError(f"split={split} part {k} arrived in pieces ({rows.num_rows} of "
                                   f"{rows['_rows'][0]} rows); this Ray Data version splits blocks")
            table = self.features(rows.drop_columns(["_split", "_part", "_rows"]))
            write_part(table, part_path(self.features_dir / f"split={split}", k))
            summary.append({"split": split, "part": k, "examples": rows.num_rows, "rows": table.num_rows})
        return pa.Table.from_pylist(summary)

    def features(self, rows: pa.Table) -> pa.Table:
        """Feature rows (``ue.feature_cache`` schema) of one part's input rows."""
        task = self.cfg.model.task
        if task == "sequence_classification":
            return self._classify(rows)
        if task == "token_classification":
            return self._tag(rows)
        return self._answer(rows)

    def _batches(self, encoded: list[dict[str, Any]]) -> Any:
        """(row indices, padded tensors) per batch of rows of similar length."""
        pad, side = self.tokenizer.pad_token_id, self.tokenizer.padding_side
        for idx in length_batches([len(r["input_ids"]) for r in encoded], batch_size=self.cfg.batch_size):
            yield idx, collate([encoded[i] for i in idx], pad_id=pad, padding_side=side)

    def _classify(self, rows: pa.Table) -> pa.Table:
        pairs = rows["text_pair"].to_pylist() if "text_pair" in rows.column_names else None
        encoded = encode_classification(self.tokenizer, rows["text"].to_pylist(), pairs,
                                        max_length=self.cfg.data.max_length)
        order, outs = [], []
        for idx, batch in self._batches(encoded):
            order.append(idx)
            outs.append(classify_batch(self.model, input_ids=batch["input_ids"],
                                       attention_mask=batch["attention_mask"]))
        back = np.argsort(np.concatenate(order))
        return feature_table(
            ids=rows["id"].to_pylist(), label=rows["label"].to_numpy(), pred=_stack(outs, "pred", back),
            logits=_stack(outs, "logits", back), hidden=_stack(outs, "hidden", back),
        )

    def _tag(self, rows: pa.Table) -> pa.Table:
        tokens, tags = rows["tokens"].to_pylist(), rows["tags"].to_pylist()
        encoded = encode_tokens(self.tokenizer, tokens, tags, max_length=self.cfg.data.max_length)
        keys, outs = [], []  # keys: (input row, word index) of every output row
        for idx, batch in self._batches(encoded):
            starts = [encoded[i]["word_starts"] for i in idx]
            out = classify_batch(self.model, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 word_starts=starts)
            word_of = [dict(zip(encoded[i]["word_starts"], encoded[i]["word_index"], strict=True)) for i in idx]
            keys += [(int(idx[r]), word_of[r][int(p)]) for r, p in zip(out.row, out.position, strict=True)]
            outs.append(out)
        back = sorted(range(len(keys)), key=keys.__getitem__)  # sentence by sentence, word by word
        keys = [keys[i] for i in back]
        ids = rows["id"].to_pylist()
        return feature_table(
            ids=[f"{ids[r]}/{w}" for r, w in keys], label=np.array([tags[r][w] for r, w in keys]),
            pred=_stack(outs, "pred", back), logits=_stack(outs, "logits", back),
            hidden=_stack(outs, "hidden", back),
            extra={"sentence_id": pa.array([ids[r] for r, _ in keys], pa.string()),
                   "word_index": pa.array([w for _, w in keys], pa.int64()),
                   "word": pa.array([tokens[r][w] for r, w in keys], pa.string())},
        )

    def _answer(self, rows: pa.Table) -> pa.Table:
        gen_cfg = self.cfg.generation
        encoded = encode_causal(self.tokenizer, rows["prompt"].to_pylist(), max_length=self.cfg.data.max_length)
        order, gens = [], []
        for idx, batch in self._batches(encoded):
            order.append(idx)
            gens.append(generate_answers(
                self.model, self.tokenizer, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                max_new_tokens=gen_cfg.max_new_tokens, stop_strings=gen_cfg.stop_strings,
            ))
        back = np.argsort(np.concatenate(order))
        texts = [t for g in gens for t in g.texts]
        texts = [texts[i] for i in back]
        perplexity = _stack(gens, "perplexity", back)
        answers = rows["answer"].to_pylist()
        refs = rows["answers"].to_pylist() if "answers" in rows.column_names else [[a] for a in answers]
        rouge = np.array([rouge_l(t, r or [a]) for t, r, a in zip(texts, refs, answers, strict=True)])
        correct = rouge > gen_cfg.rouge_threshold
        return feature_table(
            ids=rows["id"].to_pylist(), label=correct.astype(np.int64), pred=np.ones(len(texts), np.int64),
            logits=confidence_logits(perplexity), hidden=_stack(gens, "hidden", back),
            extra={"answer": pa.array(answers, pa.string()), "generated": pa.array(texts, pa.string()),
                   "rouge_l": rouge, "correct": correct, "token_entropy_mean": _stack(gens, "token_entropy_mean", back),
                   "perplexity": perplexity, "num_generated_tokens": _stack(gens, "num_tokens", back)},
        )


def _stack(outs: list[Any], name: str, back: Any) -> np.ndarray:
    """Attribute ``name`` of every batch's output, concatenated, rows put back in input order
    (batches run sorted by length)."""
    return np.concatenate([getattr(o, name) for o in outs])[back]


# -- the description written last --------------------------------------------------------------------
def _describe(cfg: Config, layout: RunLayout, model_path: str, adapter: str | None,
              tables: dict[str, pa.Table]) -> dict[str, Any]:
    """``features.json``: what the cache holds, read back from the part files' footers."""
    splits, schema = {}, None
    for split, table in tables.items():
        files = part_files(layout.features_split_dir(split))
        expected = -(-table.num_rows // cfg.rows_per_part)
        if len(files) != expected:
            raise RuntimeError(f"{layout.features_split_dir(split)}: {len(files)} part files, expected {expected}")
        schema = pq.read_schema(files[0]) if files else schema
        splits[split] = {"examples": table.num_rows, "rows": sum(pq.read_metadata(f).num_rows for f in files),
                         "parts": len(files)}
    classifier = layout.features_dir / "classifier.json"
    return {
        "model": model_path,
        "adapter": adapter,
        "task": cfg.model.task,
        "num_labels": schema.field("logits").type.list_size,
        "hidden_size": schema.field("hidden").type.list_size,
        "classifier": read_json(classifier)["kind"] if classifier.is_file() else None,
        "columns": {f.name: str(f.type) for f in schema},
        "splits": splits,
        "content_hash": _content_hash(cfg),
    }


if __name__ == "__main__":
    job_main(Config, run)
