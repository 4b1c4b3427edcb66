"""Every shipped tune config and preset runs for real: one trial (or one draw) per search, on a small
synthetic feature cache, through the whole tune stage (search, selection, refit, best.json)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jobs.schemas.tune import Config
from jobs.tune import run
from tests.jobs.test_tune_config import SHIPPED
from tests.tuning.synthetic import write_synthetic_run
from tuning.space import preset_names
from ue.artifacts import RunLayout
from ue.config import load_config
from ue.heads import load_head


def _one_trial(search: dict[str, Any], resolved: Any, name: str) -> dict[str, Any]:
    """The search cut to its first configuration, with the types its YAML gives (ints stay ints)."""
    first = {k: {"grid": [(d.grid or d.choice)[0]]} if (d.grid or d.choice) else d.model_dump(exclude_none=True)
             for k, d in resolved.space.items()}
    return {**search, "name": name, "space": first, "seeds": search.get("seeds", [0])[:1],
            "num_samples": 1, "feature_runs": []}


def _shipped_searches() -> list[dict[str, Any]]:
    searches = []
    for path in SHIPPED:
        cfg = load_config(Config, path)
        for search in cfg.searches:
            raw = search.model_dump(exclude_defaults=True, exclude={"space"})
            searches.append(_one_trial(raw, search.resolved(), f"{path.stem}-{search.name}"))
    return searches


def test_the_shipped_searches_cover_every_preset():
    assert {s["preset"] for s in _shipped_searches() if "preset" in s} == set(preset_names())


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> RunLayout:
    root = tmp_path_factory.mktemp("runs")
    layout = write_synthetic_run(root, "shipped", rows=(256, 200, 200))
    run(load_config(Config, data={"searches": _shipped_searches(), "run": {"root": str(root), "run_id": "shipped"}}))
    return layout


@pytest.mark.slow
@pytest.mark.parametrize("name", [s["name"] for s in _shipped_searches()])
def test_every_shipped_search_runs_and_refits(tuned, name):
    best = json.loads((tuned.tune_dir(name) / "best.json").read_text())
    head = load_head(tuned.head_dir(name))
    assert best["trials"] >= 1 and best["refit"]["test"] is not None
    assert isinstance(best["params"]["epochs"], int) and head.get_params()["epochs"] == best["params"]["epochs"]
    assert head.best_epoch_ >= 1
