"""jobs.fit_heads fits several settings of one trained head (save_as variants) as one pack."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jobs import fit_heads
from jobs.schemas.fit_heads import Config
from tests.jobs.test_fit_heads import local_ray, split_table, write_features  # noqa: F401 (fixture)
from ue.config import load_config
from ue.heads import HEADS, load_classifier, load_head

VARIANTS = {
    "alien_a": {"name": "alien", "params": {"epochs": 3, "lr": 1e-2}},
    "alien_b": {"name": "alien", "params": {"epochs": 4, "alpha": 1.0, "beta": 0.01, "seed": 3, "patience": 1}},
    "alien_c": {"name": "alien", "params": {"epochs": 2, "init": "random"}},
    "adue": {"name": "adue", "params": {"epochs": 3}},
}


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_save_as_variants_of_one_head_are_one_pack_and_end_as_separate_fits(local_ray, tmp_path):  # noqa: F811
    layout = write_features(tmp_path)
    entries = [{**v, "save_as": k} for k, v in VARIANTS.items()] + [{"name": "msp"}]
    cfg = load_config(Config, data={"run": {"root": str(tmp_path), "run_id": "r"}, "heads": entries})
    assert sorted(map(sorted, fit_heads._packs({e.key: fit_heads._build_head(e, layout.features_dir, {})
                                                  for e in cfg.heads}))) == [["adue"], ["alien_a", "alien_b",
                                                                                        "alien_c"], ["msp"]]
    fit_heads.run(cfg)

    report = json.loads((layout.stage_dir("fit_heads") / "metrics.json").read_text())
    seconds = {k: report["heads"][k]["fit_seconds"] for k in VARIANTS}
    assert seconds["alien_a"] == seconds["alien_b"] == seconds["alien_c"]  # one task, one pack
    train, val, test = (split_table(layout, s) for s in ("train", "val", "test"))
    classifier = load_classifier(layout.features_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny fits: a 2-thread pool on shared cores costs more than it saves
    try:
        alone = {k: HEADS.get(e["name"])(classifier=classifier, **e["params"]).fit(train, val=val)
                 for k, e in VARIANTS.items()}
    finally:
        torch.set_num_threads(threads)
    for key in VARIANTS:
        alone_head = alone[key]
        saved = load_head(layout.head_dir(key))
        assert saved.best_epoch_ == alone_head.best_epoch_, key
        assert [h["val_roc_auc"] for h in saved.history_] == pytest.approx(
            [h["val_roc_auc"] for h in alone_head.history_], abs=1e-6)
        np.testing.assert_allclose(saved.uncertainty(test), alone_head.uncertainty(test), rtol=0, atol=1e-5,
                                   err_msg=key)
