"""Score texts, text pairs or NER sentences in memory with a run's fine-tuned model and its heads.

:class:`Scorer` is the one implementation behind ``jobs.score`` (one corpus block per call), ``ue
serve`` (one batch of requests per call) and a user's own code; each row gets the columns of a score
shard (``ue.scoring``): ``id``, ``pred``, ``confidence``, ``u_<head>`` (higher = more uncertain),
optionally ``ood`` and ``accept``, and ``truncated``.

>>> scorer = Scorer.from_run("runs/minilm-sst2", heads=["alien", "msp"],
...                          accept={"target_error": 0.05})  # doctest: +SKIP
>>> scorer.score(["a gripping film", "dull and slow"]).to_pylist()  # doctest: +SKIP

The accept decision is the selective-classification threshold of ``ue.selective`` (METHODS.md,
last section), calibrated on the run's cached features of a labelled split.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ue.artifacts import RunLayout, read_json
from ue.scoring import POST_HOC_HEADS, calibrate, score_schema, token_score_schema
from ue.selective import Threshold

TASKS = ("sequence_classification", "token_classification")
AUTO = "auto"
"""``adapter`` of :meth:`Scorer.from_run`: the adapter the run's features were extracted with, else the
run's ``finetune/adapter`` when it holds one, else none."""
ACCEPT_DEFAULTS = {"head": None, "target_error": 0.05, "delta": 0.1, "min_accepted": 1, "split": "val"}
"""Keys of the ``accept`` mapping of :meth:`Scorer.from_run` (``jobs.schemas.score.AcceptConfig``)."""


def _resolved(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def check_same_model(layout: RunLayout, model: str, adapter: str | None) -> dict[str, Any] | None:
    """``features.json`` if the run has one, after checking that its features (which the heads and
    the threshold were fitted on) come from ``model`` with ``adapter``."""
    if not layout.features_meta.is_file():
        return None
    meta = read_json(layout.features_meta)
    theirs = (meta.get("model"), _resolved(meta.get("adapter")))
    if theirs != (model, _resolved(adapter)):
        raise ValueError(
            f"{layout.features_meta}: the cached features come from model {theirs[0]!r} with adapter {theirs[1]!r}, "
            f"but scoring would use {model!r} with {_resolved(adapter)!r}; heads and the accept threshold only hold "
            "for the model they were fitted on: score with that model, or re-run extract"
        )
    return meta


def head_dir(layout: RunLayout, name: str, *, fitted: bool = False) -> str | None:
    """The saved head's folder; None for msp/entropy without one (they need no fitting)."""
    directory = layout.head_dir(name)
    if (directory / "head.json").is_file():
        return str(directory)
    if name in POST_HOC_HEADS and not fitted:
        return None
    raise FileNotFoundError(
        f"head {name!r}: {directory} holds no fitted head (head.json); run the fit_heads stage with it, or "
        f"score with {' / '.join(POST_HOC_HEADS)}, which need no fitting"
    )


def load_head(name: str, directory: str | None) -> Any:
    """The head saved in ``directory``, or a fresh post-hoc one (msp/entropy) when it is None."""
    from ue.heads import build_head
    from ue.heads import load_head as load_saved

    return build_head(name) if directory is None else load_saved(directory)


def accept_threshold(layout: RunLayout, head: Any, meta: dict[str, Any] | None, *, split: str = "val",
                     target_error: float, delta: float, min_accepted: int = 1) -> Threshold:
    """The accept threshold of ``head`` on the run's cached features of ``split`` (``ue.scoring.calibrate``)."""
    import pyarrow.parquet as pq

    from ue.feature_cache import check_feature_files, part_files

    if meta is None:
        raise FileNotFoundError(f"{layout.features_meta} does not exist: accept needs the cached calibration "
                                "features; run the extract stage first, or set accept=null")
    files = part_files(layout.features_split_dir(split))
    needs = {c: "the accept threshold" for c in ("label", "pred", *head.requires)}
    check_feature_files(files, needs=needs, hidden_size=meta["hidden_size"], num_labels=meta["num_labels"])
    features = pa.concat_tables(pq.read_table(f, columns=list(needs)) for f in files)
    return calibrate(head, features, target_error=target_error, delta=delta, min_accepted=min_accepted)


class Scorer:
    """A loaded model with its heads and accept threshold; scores lists of inputs into score rows.

    Args:
        model: a ``*ForSequenceClassification`` / ``*ForTokenClassification`` model in eval mode on
            ``device`` (an adapter already merged in).
        tokenizer: its tokenizer.
        heads: name -> fitted head; each becomes a ``u_<name>`` column (higher = more uncertain).
        task: ``sequence_classification`` (a row per text) or ``token_classification`` (a row per
            sentence with per-word lists).
        ood: a fitted head whose score becomes the ``ood`` column, or None.
        threshold: accept when ``u_<decision> <= threshold.threshold``; None leaves ``accept`` out.
        decision: the head deciding ``accept`` (default: the first of ``heads``).
        tag_names: token classification: tag names in index order, for a ``tags`` column.
        max_length: tokens per input at most (longer ones are cut and flagged ``truncated``).
        max_chars: characters per text kept before tokenising.
        batch_size: rows per forward pass (rows of similar length are batched together).
    """

    def __init__(self, *, model: Any, tokenizer: Any, heads: Mapping[str, Any], task: str = TASKS[0],
                 ood: Any | None = None,
                 threshold: Threshold | None = None, decision: str | None = None,
                 tag_names: Sequence[str] | None = None, max_length: int = 128, max_chars: int = 100_000,
                 batch_size: int = 64) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.heads, self.ood, self.threshold = dict(heads), ood, threshold
        if threshold is not None and not self.heads:
            raise ValueError("accept needs a head to decide with: pass at least one in heads, e.g. ['msp']")
        self.decision = None if threshold is None else (decision or next(iter(self.heads)))
        if self.decision is not None and self.decision not in self.heads:
            raise ValueError(f"decision head {self.decision!r} is not among the heads ({', '.join(self.heads)})")
        if task not in TASKS:
            raise ValueError(f"task {task!r}: scoring supports {' and '.join(TASKS)}")
        self.tokens = task == "token_classification"
        if self.tokens and ood is not None:
            raise ValueError("token classification scores words: an ood head is not supported there")
        self.tag_names = list(tag_names) if tag_names is not None else None
        self.max_length, self.max_chars, self.batch_size = max_length, max_chars, batch_size
        self.schema = (token_score_schema(list(self.heads), tags=self.tag_names is not None,
                                          with_accept=threshold is not None) if self.tokens else
                       score_schema(list(self.heads), ood=ood is not None, with_accept=threshold is not None))

    @classmethod
    def load(cls, name_or_path: str, *, adapter: str | None = None, task: str = TASKS[0],
             num_labels: int | None = None, dtype: str = "float32", trust_remote_code: bool = False,
             allow_new_weights: bool = False, init_seed: int = 0, head_dirs: Mapping[str, str | None] | None = None,
             ood_dir: str | None = None, device: str | None = None, **options: Any) -> Scorer:
        """Load the model (merging ``adapter`` in) and the heads saved in ``head_dirs`` (name -> folder,
        None for msp/entropy); ``options`` are the other keyword arguments of :class:`Scorer`.
        ``device`` None: CUDA when there is one."""
        import torch

        from ue.heads import load_head as load_saved
        from ue.models import load_adapter, load_model, load_tokenizer

        if task not in TASKS:
            raise ValueError(f"task {task!r}: scoring supports {' and '.join(TASKS)}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if num_labels is None:  # a fine-tuned checkpoint knows its classes
            from transformers import AutoConfig

            from ue.config.paths import resolve_model_path

            num_labels = AutoConfig.from_pretrained(resolve_model_path(name_or_path),
                                                    trust_remote_code=trust_remote_code).num_labels
        tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
        # Without an adapter the checkpoint must bring its classifier: a random one scores noise.
        refuse = adapter is None and not allow_new_weights
        model = load_model(name_or_path, task=task, num_labels=num_labels, dtype=dtype,
                           pad_token_id=tokenizer.pad_token_id, trust_remote_code=trust_remote_code,
                           new_weights="refuse" if refuse else "allow", seed=init_seed)
        if adapter is not None:
            model = load_adapter(model, adapter).merge_and_unload()  # folding LoRA in makes each forward cheaper
        heads = {name: load_head(name, d) for name, d in (
            {"msp": None, "entropy": None} if head_dirs is None else head_dirs).items()}
        return cls(model=model.eval().to(device), tokenizer=tokenizer, heads=heads, task=task,
                   ood=load_saved(ood_dir) if ood_dir else None, **options)

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, *, heads: Sequence[str] = ("msp", "entropy"),
                 ood: str | None = None, accept: Mapping[str, Any] | None = None, model: str | None = None,
                 adapter: str | None = AUTO, task: str | None = None, num_labels: int | None = None,
                 **options: Any) -> Scorer:
        """The scorer of a run directory: its model and adapter, the heads saved under ``heads/`` (or
        msp/entropy, which need no fitting), and with ``accept`` the calibrated accept threshold.

        Args:
            run_dir: ``<root>/<run_id>``.
            heads: head names, each a ``u_<name>`` column.
            ood: a fitted head whose score becomes the ``ood`` column.
            accept: ``{head, target_error, delta, min_accepted, split}`` (defaults ``ACCEPT_DEFAULTS``);
                None: no ``accept`` column.
            model: the backbone; None takes the one the run's cached features (``features.json``) come from.
            adapter: a PEFT adapter folder, None for the bare model, or :data:`AUTO`.
            task, num_labels: default to ``features.json``'s.
            options: more keyword arguments of :meth:`load` (``dtype``, ``device``, ``batch_size``, ...).
        """
        run_dir = Path(run_dir).expanduser()
        layout = RunLayout(run_dir.parent, run_dir.name)
        meta = read_json(layout.features_meta) if layout.features_meta.is_file() else {}
        model = model or meta.get("model")
        if model is None:
            raise FileNotFoundError(f"{layout.features_meta} does not exist, so the run does not say which model it "
                                    "scores with: pass model=, or run the extract stage first")
        if adapter == AUTO:
            adapter = meta.get("adapter") if meta else (
                str(layout.adapter_dir) if (layout.adapter_dir / "adapter_config.json").is_file() else None)
        meta = check_same_model(layout, model, adapter)
        head_dirs = {name: head_dir(layout, name) for name in heads}
        threshold, decision = None, None
        if accept is not None:
            unknown = sorted(set(accept) - set(ACCEPT_DEFAULTS))
            if unknown:
                raise ValueError(f"accept: unknown key(s) {', '.join(unknown)}; known: {', '.join(ACCEPT_DEFAULTS)}")
            settings = {**ACCEPT_DEFAULTS, **accept}
            decision = settings.pop("head") or (heads[0] if heads else None)
            if decision not in head_dirs:
                raise ValueError(f"accept.head {decision!r} is not in heads ({', '.join(heads)}); add it to heads")
            threshold = accept_threshold(layout, load_head(decision, head_dirs[decision]), meta, **settings)
        return cls.load(model, adapter=adapter, task=task or (meta or {}).get("task", TASKS[0]),
                        num_labels=num_labels or (meta or {}).get("num_labels"), head_dirs=head_dirs,
                        ood_dir=head_dir(layout, ood, fitted=True) if ood else None, threshold=threshold,
                        decision=decision, **options)

    @property
    def columns(self) -> list[str]:
        """The output columns, in order."""
        return self.schema.names

    def score(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
              ids: Sequence[str] | None = None) -> pa.Table:
        """One score row per text (a sentence, split at whitespace, for token classification).

        Args:
            texts: (n,) the texts; pairs: (n,) second texts of a pair task, or None.
            ids: (n,) row ids; None numbers the rows ``"0"``, ``"1"``, ...

        Returns:
            A table with :attr:`schema` (``ue.scoring``), rows in the order given.
        """
        return self.score_timed(texts, pairs, ids=ids)[0]

    def score_rows(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                   ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """:meth:`score` as a list of dicts (one per row)."""
        return self.score(texts, pairs, ids=ids).to_pylist()

    def score_timed(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                    ids: Sequence[str] | None = None) -> tuple[pa.Table, float]:
        """:meth:`score` and the seconds its heads took on top of the model's forward passes."""
        ids = [str(i) for i in range(len(texts))] if ids is None else list(ids)
        if len(ids) != len(texts) or (pairs is not None and len(pairs) != len(texts)):
            raise ValueError(f"texts ({len(texts)}), pairs ({'-' if pairs is None else len(pairs)}) and ids "
                             f"({len(ids)}) must have the same length")
        if pairs is not None and self.tokens:
            raise ValueError("token classification scores one sentence per row: pass no pairs")
        if not texts:
            return self.schema.empty_table(), 0.0
        if self.tokens:
            return self._score_words(texts, ids)
        return self._score_sequences(texts, pairs, ids)

    def _score_sequences(self, texts: Sequence[str], pairs: Sequence[str] | None,
                         ids: list[str]) -> tuple[pa.Table, float]:
        from ue.extraction import classify_batch, length_batches
        from ue.scoring import encode_flagging_truncation, score_columns, score_table
        from ue.tokenize import collate

        encoded, truncated = encode_flagging_truncation(self.tokenizer, list(texts), None if pairs is None else
                                                        list(pairs), max_length=self.max_length,
                                                        max_chars=self.max_chars)
        order, outs = [], []
        pad, side = self.tokenizer.pad_token_id, self.tokenizer.padding_side
        for idx in length_batches([len(r["input_ids"]) for r in encoded], batch_size=self.batch_size):
            batch = collate([encoded[i] for i in idx], pad_id=pad, padding_side=side)
            outs.append(classify_batch(self.model, **batch))
            order.append(idx)
        back = np.argsort(np.concatenate(order))  # batches are sorted by length; restore the given order
        started = time.perf_counter()
        columns = score_columns(
            pred=np.concatenate([o.pred for o in outs])[back], logits=np.concatenate([o.logits for o in outs])[back],
            hidden=np.concatenate([o.hidden for o in outs])[back], heads=self.heads, ood=self.ood,
        )
        table = score_table(ids, columns, truncated=truncated, schema=self.schema, decision=self.decision,
                            threshold=self.threshold)
        return table, time.perf_counter() - started

    def _score_words(self, texts: Sequence[str], ids: list[str]) -> tuple[pa.Table, float]:
        """Each text a sentence split at whitespace, one score per word (its first sub-token, as
        ``jobs.extract`` made the features the heads were fitted on)."""
        from ue.extraction import classify_batch, length_batches
        from ue.scoring import score_columns, token_score_table
        from ue.tokenize import collate, encode_tokens

        words = [t[:self.max_chars].split() for t in texts]
        encoded = encode_tokens(self.tokenizer, words, max_length=self.max_length)
        outs, sentence, word = [], [], []
        pad, side = self.tokenizer.pad_token_id, self.tokenizer.padding_side
        for idx in length_batches([len(r["input_ids"]) for r in encoded], batch_size=self.batch_size):
            rows_in = [encoded[i] for i in idx]
            batch = collate([{k: r[k] for k in ("input_ids", "attention_mask")} for r in rows_in], pad_id=pad,
                            padding_side=side)
            out = classify_batch(self.model, **batch, word_starts=[r["word_starts"] for r in rows_in])
            outs.append(out)
            sentence.append(idx[out.row])
            word.append(np.array([w for r in rows_in for w in r["word_index"]], dtype=np.int64))
        started = time.perf_counter()
        columns = score_columns(pred=np.concatenate([o.pred for o in outs]),
                                logits=np.concatenate([o.logits for o in outs]),
                                hidden=np.concatenate([o.hidden for o in outs]), heads=self.heads)
        table = token_score_table(ids, words, sentence=np.concatenate(sentence), word=np.concatenate(word),
                                  columns=columns, schema=self.schema, tag_names=self.tag_names,
                                  decision=self.decision,
                                  threshold=self.threshold)
        return table, time.perf_counter() - started
