"""Stage 5, score: stream a corpus through the model and its heads; every row gets a prediction, an
uncertainty per head and an accept/abstain decision with a bounded error rate.

    python -m jobs.score --config jobs/configs/score/minilm_sst2.yaml run.run_id=demo

Recipe:
1. Setup: the adapter, the heads (folders under ``heads/`` or msp/entropy), the accept threshold
   (``ue.selective`` on the decision head's scores of the cached calibration features), the corpus
   files and their blocks (``ue.corpus``). Shards written for other content are removed; blocks
   that already have a progress record are skipped (resume).
2. A Ray Data stream: read tasks parse one block each into good and bad rows (one Ray row per
   block, so a block never splits; they reserve no CPU, the model does the work); an actor pool,
   one ``ue.Scorer`` per actor (one per GPU when there are GPUs), scores one block per call and
   writes ``scores/quarantine/<block>.parquet`` (bad rows, if any), ``scores/<block>.parquet`` and
   last ``scores/progress/<block>.json``, each atomically. The driver logs progress and rows/s.
3. The summary: counts of rows scored, quarantined, truncated and accepted, summed from the progress
   records into ``scores/summary.json``, and the rows whose id repeats an earlier one (kept and scored,
   counted as ``duplicate_ids`` with examples, and warned about).

Exactly once: blocks are a pure function of the files' bytes and the config, every block writes
under its own deterministic name, and its progress record is written only after its shards. A
killed run leaves whole shards of finished blocks and nothing else under a final name; the rerun
redoes the blocks without a record (overwriting any shard they wrote) and skips the rest.

Memory: the driver holds one small descriptor per block; Ray Data's backpressure bounds the blocks
in flight; an actor holds one block (at most ``corpus.block_mb`` MiB of text) at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa

from jobs._common import adapter_dir, init_ray, job_main, run_stage
from jobs.schemas.score import Config
from ue.artifacts import RunLayout, atomic_write_json, read_json
from ue.corpus import ROW_FIELDS, Block, Columns, InputFile, list_inputs, plan_blocks, read_block
from ue.scorer import accept_threshold, check_same_model, head_dir, load_head
from ue.scoring import QUARANTINE_SCHEMA, duplicate_ids
from ue.selective import Threshold

log = logging.getLogger("ue.jobs.score")
CONTENT_KEYS = {"corpus", "model", "adapter", "heads", "ood", "accept"}
"""Config keys that change what the shards hold; shards written under others are discarded."""
READ_SCHEMA = pa.schema([("block", pa.string()), *((k, pa.list_(pa.int64() if k == "line" else pa.string()))
                                                    for k in ROW_FIELDS)])
"""One Ray Data row per block: its descriptor and its rows as lists (``ue.corpus.ROW_FIELDS``)."""
PROGRESS_EVERY_S = 5.0


def run(cfg: Config) -> dict[str, Any]:
    return run_stage("score", cfg, partial(score, cfg))


def score(cfg: Config, layout: RunLayout) -> dict[str, Any]:
    # 1. Setup: adapter, heads, threshold, a clean output folder for this content, the blocks to do.
    adapter = adapter_dir(cfg.adapter, layout)
    meta = check_same_model(layout, cfg.model.name_or_path, adapter)
    head_dirs = {name: head_dir(layout, name) for name in cfg.heads}
    ood_dir = head_dir(layout, cfg.ood, fitted=True) if cfg.ood else None
    threshold = _threshold(cfg, layout, head_dirs, meta)
    files = list_inputs(cfg.corpus.paths, format=cfg.corpus.format, derived_ids=cfg.corpus.id_column is None)
    _reset_stale_scores(layout.scores_dir, _content_hash(cfg, files, [*head_dirs.values(), ood_dir], threshold),
                        force=cfg.run.force)
    if threshold is not None:
        atomic_write_json(layout.scores_dir / "threshold.json", asdict(threshold))
    blocks = list(plan_blocks(files, rows_per_block=cfg.corpus.rows_per_block,
                              block_bytes=int(cfg.corpus.block_mb * 2**20)))
    done = {p.stem for p in _progress_dir(layout).glob("part-*.json")}
    todo = [b for b in blocks if b.name not in done]
    log.info("score: %d file(s), %d block(s), %d to do", len(files), len(blocks), len(todo))

    # 2. Stream the blocks still to do through the actor pool.
    started_at = time.perf_counter()
    rows_now = 0
    if todo:
        started = init_ray()
        try:
            rows_now = _stream(cfg, layout, todo, len(blocks), adapter=adapter, num_labels=_num_labels(cfg, meta),
                               head_dirs=head_dirs, ood_dir=ood_dir, threshold=threshold)
        finally:
            if started:
                import ray

                ray.shutdown()

    # 3. The summary of every block (this run's and earlier runs').
    summary = _summarise(layout, blocks, threshold, seconds=time.perf_counter() - started_at, rows_now=rows_now)
    atomic_write_json(layout.scores_dir / "summary.json", summary)
    log.info("score: %s rows: %s scored, %s quarantined, %s truncated, %s accepted", f"{summary['rows']:,}",
             f"{summary['scored']:,}", f"{summary['quarantined']:,}", f"{summary['truncated']:,}",
             "-" if summary["accepted"] is None else f"{summary['accepted']:,}")
    return summary


# -- setup -------------------------------------------------------------------------------------------
def _threshold(cfg: Config, layout: RunLayout, head_dirs: dict[str, str | None],
               meta: dict[str, Any] | None) -> Threshold | None:
    """The accept threshold of the decision head on the calibration split; None without accept."""
    if cfg.accept is None:
        return None
    threshold = accept_threshold(layout, load_head(cfg.decision, head_dirs[cfg.decision]), meta,
                                 split=cfg.accept.split, target_error=cfg.accept.target_error,
                                 delta=cfg.accept.delta, min_accepted=cfg.accept.min_accepted)
    log.info("score: accept when u_%s <= %.6g: %.1f%% of the %s split accepted, error %.4f there (upper bound "
             "%.4f at 1 - delta = %.2f)", cfg.decision, threshold.threshold, 100 * threshold.coverage,
             cfg.accept.split, threshold.accepted_error, threshold.upper_bound, 1 - threshold.delta)
    return threshold


def _num_labels(cfg: Config, meta: dict[str, Any] | None) -> int | None:
    return cfg.model.num_labels or (meta or {}).get("num_labels")


def _content_hash(cfg: Config, files: list[InputFile], head_dirs: list[str | None],
                  threshold: Threshold | None) -> str:
    """What the shards depend on: config, the files' identities, the saved heads and the threshold."""
    digest = hashlib.sha256()
    content = {"config": cfg.model_dump(mode="json", include=CONTENT_KEYS), "files": [asdict(f) for f in files],
               "threshold": None if threshold is None else threshold.threshold}
    digest.update(json.dumps(content, sort_keys=True).encode())
    for directory in filter(None, head_dirs):
        for name in ("head.json", "head.safetensors"):
            digest.update((Path(directory) / name).read_bytes())
    return digest.hexdigest()[:16]


def _progress_dir(layout: RunLayout) -> Path:
    return layout.scores_dir / "progress"


def _reset_stale_scores(scores_dir: Path, content_hash: str, *, force: bool) -> None:
    """Keep finished blocks only when written for the same content (and no force); drop temporary
    files a killed writer left behind."""
    marker = scores_dir / "content.json"
    same = marker.is_file() and read_json(marker).get("content_hash") == content_hash
    if scores_dir.exists() and (force or not same):
        log.info("score: removing the scores in %s (%s)", scores_dir, "force" if force else "other content")
        shutil.rmtree(scores_dir)
    for tmp in scores_dir.rglob(".*.tmp"):
        tmp.unlink()
    atomic_write_json(marker, {"content_hash": content_hash})


# -- the stream --------------------------------------------------------------------------------------
def _stream(cfg: Config, layout: RunLayout, todo: list[Block], total: int, **scorer: Any) -> int:
    """Run the blocks in ``todo`` through read tasks and the scoring actors; returns rows done."""
    import ray.data

    res, corpus = cfg.resources, cfg.corpus
    columns = Columns(corpus.text_column, corpus.text_pair_column, corpus.id_column)
    records = (
        ray.data.from_items([{"block": b.to_json()} for b in todo], override_num_blocks=len(todo))
        .map_batches(read_blocks, batch_size=1, batch_format="pyarrow", fn_kwargs={"columns": columns},
                     num_cpus=0, compute=ray.data.TaskPoolStrategy(size=cfg.read_concurrency))
        .map_batches(
            BlockScorer, batch_size=1, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=res.num_workers),
            num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker if res.use_gpu else 0,
            fn_constructor_kwargs={"cfg": cfg, "scores_dir": str(layout.scores_dir), **scorer},
        )
    )
    progress = _Progress(done=total - len(todo), total=total)
    for record in records.iter_rows():
        progress.update(record)
    return progress.rows


def read_blocks(batch: pa.Table, *, columns: Columns) -> pa.Table:
    """One block descriptor -> one row holding the descriptor and the block's rows as lists."""
    text = batch["block"][0].as_py()
    rows = read_block(Block.from_json(text), columns)
    return pa.table({"block": [text], **{k: [v] for k, v in rows.items()}}, schema=READ_SCHEMA)


class BlockScorer:
    """One model replica (a ``ue.Scorer``): scores one block per call, quarantines its bad rows and
    writes its outputs."""

    def __init__(self, *, cfg: Config, scores_dir: str, adapter: str | None, num_labels: int | None,
                 head_dirs: dict[str, str | None], ood_dir: str | None, threshold: Threshold | None) -> None:
        import torch

        from ue.scorer import Scorer

        torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
        self.cfg, self.scores_dir = cfg, Path(scores_dir)
        model, corpus = cfg.model, cfg.corpus
        self.scorer = Scorer.load(
            model.name_or_path, adapter=adapter, task=model.task, num_labels=num_labels, dtype=model.dtype,
            trust_remote_code=model.trust_remote_code, allow_new_weights=model.allow_new_weights,
            init_seed=model.init_seed, head_dirs=head_dirs, ood_dir=ood_dir,
            device="cuda" if cfg.resources.use_gpu and torch.cuda.is_available() else "cpu",
            threshold=threshold, decision=cfg.decision, tag_names=cfg.tag_names, max_length=corpus.max_length,
            max_chars=corpus.max_chars, batch_size=cfg.batch_size,
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        from ue.feature_cache import write_part

        started = time.perf_counter()
        block = Block.from_json(batch["block"][0].as_py())
        rows = {k: batch[k][0].as_py() for k in ROW_FIELDS}
        good = [i for i, reason in enumerate(rows["reason"]) if reason is None]
        bad = [i for i, reason in enumerate(rows["reason"]) if reason is not None]
        pairs = [rows["text_pair"][i] for i in good] if self.cfg.corpus.text_pair_column else None
        table, heads_seconds = self.scorer.score_timed([rows["text"][i] for i in good], pairs,
                                                       ids=[rows["id"][i] for i in good])
        if bad:  # quarantine first: the progress record below vouches for both files
            quarantine = {"file": [block.path] * len(bad), **{k: [rows[k][i] for i in bad]
                                                              for k in ("line", "id", "reason", "raw")}}
            write_part(pa.table(quarantine, schema=QUARANTINE_SCHEMA),
                       self.scores_dir / "quarantine" / f"{block.name}.parquet")
        write_part(table, self.scores_dir / f"{block.name}.parquet")
        record = {
            "block": block.name, "file": block.path, "first_line": block.first_line, "rows": len(good) + len(bad),
            "scored": len(good), "quarantined": len(bad), "truncated": _count(table, "truncated"),
            "accepted": _count(table, "accept") if "accept" in table.column_names else None,
            "seconds": round(time.perf_counter() - started, 3), "seconds_heads": round(heads_seconds, 3),
        }
        atomic_write_json(self.scores_dir / "progress" / f"{block.name}.json", record)
        return pa.Table.from_pylist([record])


def _count(table: pa.Table, column: str) -> int:
    import pyarrow.compute as pc

    return int(pc.sum(table[column]).as_py() or 0)


class _Progress:
    """Logs blocks done, rows, rows/s and the time left, at most every ``PROGRESS_EVERY_S`` seconds."""

    def __init__(self, *, done: int, total: int) -> None:
        self.done, self.total, self.rows, self.blocks = done, total, 0, 0
        self.started = self.logged = time.perf_counter()

    def update(self, record: dict[str, Any]) -> None:
        self.blocks, self.rows = self.blocks + 1, self.rows + record["rows"]
        now = time.perf_counter()
        if now - self.logged < PROGRESS_EVERY_S and self.blocks > 1 and self.done + self.blocks < self.total:
            return
        self.logged, elapsed = now, now - self.started
        left = elapsed / self.blocks * (self.total - self.done - self.blocks)
        log.info("score: %d/%d blocks, %s rows this run, %.0f rows/s, about %.0f s left (last: %s, %d quarantined)",
                 self.done + self.blocks, self.total, f"{self.rows:,}", self.rows / max(elapsed, 1e-9), left,
                 record["block"], record["quarantined"])


# -- the summary -------------------------------------------------------------------------------------
def _summarise(layout: RunLayout, blocks: list[Block], threshold: Threshold | None, *, seconds: float,
               rows_now: int) -> dict[str, Any]:
    """Totals over every block's progress record; a block without one means the run is incomplete."""
    progress = _progress_dir(layout)
    missing = [b.name for b in blocks if not (progress / f"{b.name}.json").is_file()]
    if missing:
        raise RuntimeError(f"{len(missing)} block(s) were not scored (e.g. {', '.join(missing[:3])}); rerun the "
                           "stage to finish them")
    records = [read_json(progress / f"{b.name}.json") for b in blocks]
    totals = {k: sum(r[k] for r in records) for k in ("rows", "scored", "quarantined", "truncated")}
    accepted = None if threshold is None else sum(r["accepted"] for r in records)
    duplicates, examples = duplicate_ids(layout.scores_dir)
    if duplicates:
        log.warning("score: %d row(s) repeat an id seen earlier (kept and scored; e.g. %s)", duplicates,
                    ", ".join(map(repr, examples)))
    return {
        "scores": str(layout.scores_dir), "quarantine": str(layout.quarantine_dir), "blocks": len(blocks),
        **totals, "accepted": accepted, "duplicate_ids": duplicates, "duplicate_id_examples": examples,
        "coverage": None if accepted is None else accepted / max(totals["scored"], 1),
        "threshold": None if threshold is None else asdict(threshold),
        "seconds": round(seconds, 3), "rows_this_run": rows_now, "rows_per_s": round(rows_now / max(seconds, 1e-9), 1),
    }


if __name__ == "__main__":
    job_main(Config, run)
