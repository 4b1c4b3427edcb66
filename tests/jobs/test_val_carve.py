"""``data.val_from_train``: finetune and extract read the same carved val rows (and train without them)."""

from __future__ import annotations

import json
from pathlib import Path

from jobs import extract, finetune
from jobs.schemas.extract import Config as ExtractConfig
from jobs.schemas.finetune import Config as FinetuneConfig
from ue.config import load_config

DATA = {"task": "sequence_classification", "splits": {"train": "train", "test": "test"}, "val_from_train": 0.2}
MODEL = {"name_or_path": "unused", "task": "sequence_classification", "num_labels": 2}


def test_finetune_and_extract_carve_the_same_val_rows(tmp_path: Path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    for split, n in (("train", 300), ("test", 40)):
        rows = [{"text": f"{split} {i}", "label": i % 2} for i in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {**DATA, "name": str(folder)}
    ft = load_config(FinetuneConfig, data={"data": data, "model": MODEL})
    ex = load_config(ExtractConfig, data={"data": data, "model": MODEL, "adapter": None})

    # The fine-tune keeps only the columns it trains on; the texts are distinct, so they identify rows.
    ids = {split: (finetune.read_split(ft, split).column("text").to_pylist(),
                   extract._read_split(ex, split).column("text").to_pylist()) for split in ("train", "val")}
    for split, (from_finetune, from_extract) in ids.items():
        assert from_finetune == from_extract, split
    assert not set(ids["train"][0]) & set(ids["val"][0])
    assert len(ids["train"][0]) + len(ids["val"][0]) == 300 and 35 <= len(ids["val"][0]) <= 85
    assert extract._read_split(ex, "test").num_rows == 40
