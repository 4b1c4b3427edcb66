"""The two study configs share docs/results.md: each rewrites only its own part, byte for byte.

Fake results stand in for the runs (rendering reads nothing else), so this runs in a second.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from ue.config import load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def studies(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # as `python benchmarks/study.py` sees it
    return importlib.import_module("study"), importlib.import_module("study_qa")


def glue_results(study: Any, shift: float = 0.0) -> dict[str, dict[int, dict[str, Any]]]:
    methods = [study.MODEL_ROW, "msp", "entropy", "adue", "adue_paper", "alien", "alien_paper", "alien_beta"]
    def run(seed: int) -> dict[str, Any]:
        metrics = {m: {"roc_auc": 0.7 + 0.01 * k + shift + 0.001 * seed, "aurc": 0.1, "prr": 0.3, "ece": 0.05}
                   for k, m in enumerate(methods)}
        chosen = {name: {"alpha": 0.1, "best_epoch": 3, "val_roc_auc": 0.8} for name in study.SEARCHES}
        accept = {"coverage": 0.5, "accepted_error": 0.05, "val_coverage": 0.5, "upper_bound": 0.09,
                  "test_error_rate": 0.1, "ece_noise_floor": 0.02, "target_error": 0.1, "majority_error": 0.5}
        return {"metrics": metrics, "chosen": chosen, "accept": accept, "seconds": {"finetune": 10.0}}
    return {"sst2": {seed: run(seed) for seed in (0, 1)}}


def qa_results(study_qa: Any, shift: float = 0.0) -> dict[str, dict[int, dict[str, Any]]]:
    def run(seed: int, gain: float) -> dict[str, Any]:
        return {"accuracy": 0.7, "roc_auc": {s: 0.6 + shift + gain + 0.01 * seed for s in study_qa.SCORES},
                "ece": 0.1, "seconds": {"finetune": 30.0},
                "by_kind": {k: {"share": 0.25, "accuracy": 0.5, "roc_auc": None if k == "easy" else 0.6}
                            for k in study_qa.KINDS},
                "ood": {f"{a}|{b}": {s: 0.9 for s in study_qa.SCORES} for a, b in study_qa.OOD_PAIRS}}
    return {"ce": {s: run(s, 0.0) for s in (0, 1, 2)}, "ua_clm": {s: run(s, 0.05) for s in (0, 1, 2)}}


def glue_text(study: Any, results: dict[str, Any]) -> str:
    cfg = load_config(study.StudyConfig, REPO / "benchmarks" / "study.yaml")
    return study.render(cfg, results, {}, [], "results")


def qa_text(study_qa: Any, results: dict[str, Any]) -> str:
    cfg = load_config(study_qa.QAStudyConfig, REPO / "benchmarks" / "study_qa.yaml")
    return study_qa.render(cfg, "study_qa.yaml", results, {"qa-base-s0": 61.0}, 1234, {0: 0.7, 1: 0.65, 2: 0.6})


def test_each_study_rewrites_only_its_own_part_of_the_page(studies, tmp_path: Path):
    study, study_qa = studies
    page = tmp_path / "results.md"
    study.write_page(page, glue_text(study, glue_results(study)))
    glue_only = page.read_bytes()
    page.write_text(study_qa.splice_section(page.read_text(), "study_qa.yaml", qa_text(study_qa, qa_results(study_qa))))
    both = page.read_bytes()
    assert both.startswith(glue_only.rstrip(b"\n")) and b"<!-- end study: study_qa.yaml -->" in both

    study.write_page(page, glue_text(study, glue_results(study)))  # the main study re-rendered, nothing rerun
    assert page.read_bytes() == both
    page.write_text(study_qa.splice_section(page.read_text(), "study_qa.yaml", qa_text(study_qa, qa_results(study_qa))))
    assert page.read_bytes() == both

    study.write_page(page, glue_text(study, glue_results(study, shift=0.05)))  # new GLUE numbers keep the QA part
    section = both[both.index(b"<!-- begin study:"):]
    assert page.read_bytes().endswith(section) and page.read_bytes() != both
    before = page.read_bytes()
    page.write_text(study_qa.splice_section(page.read_text(), "study_qa.yaml",
                                            qa_text(study_qa, qa_results(study_qa, shift=0.1))))
    after = page.read_bytes()
    cut = before.index(b"<!-- begin study:")
    assert after[:cut] == before[:cut] and after != before


def test_the_committed_page_keeps_every_byte_when_a_qa_section_is_added(studies, tmp_path: Path):
    study, study_qa = studies
    committed = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    cut = committed.find("<!-- begin study:")
    glue = committed if cut < 0 else committed[:cut].removesuffix("\n")
    page = tmp_path / "results.md"
    page.write_text(study_qa.splice_section(glue, "study_qa.yaml", "## QA\n\nnumbers\n"))
    study.write_page(page, glue)  # what --render-only of study.yaml writes when no GLUE run changed
    text = page.read_text()
    assert text.startswith(glue) and text.endswith("<!-- begin study: study_qa.yaml -->\n## QA\n\nnumbers\n"
                                                   "<!-- end study: study_qa.yaml -->\n")


def test_a_missing_end_marker_is_refused(studies):
    _, study_qa = studies
    with pytest.raises(ValueError, match="end marker"):
        study_qa.splice_section("x\n<!-- begin study: study_qa.yaml -->\nold\n", "study_qa.yaml", "new")


def test_the_qa_section_states_the_anchor_verdict_from_the_numbers(studies):
    _, study_qa = studies
    text = qa_text(study_qa, qa_results(study_qa))
    assert "token-entropy ROC-AUC): CE 62.52 -> UA-CLM 69.55 (+7.03)" in text
    assert ("`ua_clm` vs `ce`: +5.00 +- 0.00 points (paired by seed: +5.00, +5.00, +5.00): moves the same way as "
            "the paper on every seed") in text
    assert "| ce | 70.00 +- 0.00 | 61.00 +- 1.00 |" in text  # accuracy, then token entropy over seeds 0-2
    assert "seed 0 70.0% (61 s), seed 1 65.0% (-)" in text
