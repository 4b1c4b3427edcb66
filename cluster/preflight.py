"""Checks of a pipeline that its stage schemas cannot make alone: names that only mean something next
to the registries, the other stages or the file system. ``load_pipeline`` runs them (so `ue validate`
and `ue run` both refuse), with no network and without importing torch.

- fit_heads: every ``heads[i].name`` is a registered head;
- tune: every search's head (its own or its preset's) is a trained head;
- score, serve: every head, ``accept.head`` and ``ood`` is ``msp``/``entropy``, a head an earlier
  fit_heads or tune stage of this pipeline saves, or a folder already under ``<run>/heads/``;
  score: every ``corpus.paths`` entry matches a file;
- finetune, extract, score: a ``model.name_or_path`` written as a path (``/``, ``./``, ``../``,
  ``~``) is a folder; finetune: every ``lora.target_modules`` entry names a module of a local
  model (read from its safetensors headers); finetune, extract: ``data.name`` is a file or a folder (here or under
  ``$UE_DATA_DIR``) holding the split files the stage reads, or, with the hub reachable, a hub
  name (with ``HF_HUB_OFFLINE=1`` it must be local).

The file checks look at this machine, so a submission (``check_files=False``) skips them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ue.config import ConfigIssue
from ue.registry import unknown_name_message

if TYPE_CHECKING:
    from cluster.pipeline import Pipeline, Problem

TRAINED_HEADS = ("adue", "alien")
"""Heads with a fitting loop that Tune can search (a test keeps this equal to ue.heads)."""
POST_HOC = ("msp", "entropy")
"""As ``ue.scoring.POST_HOC_HEADS``: heads a score stage can use without a fitted folder."""


def check(pipe: Pipeline, *, check_files: bool = True) -> list[Problem]:
    """Every problem of the list above, each naming its stage entry, key, value and the fix.

    Without ``check_files`` (a submission: its paths are the cluster's), a score stage's heads and
    corpus paths are not looked up on this machine."""
    from cluster.pipeline import Problem

    saved: list[str] = []
    problems = []
    for index, stage in enumerate(pipe.stages):
        where = f"stages.{index} {stage.name}"
        source = stage.spec.config if isinstance(stage.spec.config, str) else f"{pipe.path} (stages.{index}.config)"
        checks = [{"fit_heads": _fit_heads, "tune": _tune, "score": _score, "serve": _heads}.get(stage.name)]
        checks += [_model, _lora, _data] if check_files else []
        heads_dir = pipe.layout.run_dir / "heads" if check_files and pipe.is_local else None
        for check_stage in filter(None, checks):
            for key, message, value, hint in check_stage(stage.cfg, saved=saved, heads_dir=heads_dir):
                problems.append(Problem(where, ConfigIssue(str(source), key, message, value=value, hint=hint)))
        saved += _saves(stage.name, stage.cfg)
    return problems


Found = Iterator[tuple[str, str, Any, str]]
"""(key, message, value, hint) of each problem a stage check finds."""


def _fit_heads(cfg: Any, **_: Any) -> Found:
    from jobs.schemas.fit_heads import DEFAULT_HEADS

    for i, entry in enumerate(cfg.heads):
        if entry.name not in DEFAULT_HEADS:
            yield f"heads.{i}.name", unknown_name_message("head", entry.name, DEFAULT_HEADS), entry.name, ""


def _tune(cfg: Any, **_: Any) -> Found:
    for i, search in enumerate(cfg.searches):
        head = search.head if search.head is not None else search.resolved().head
        if head not in TRAINED_HEADS:
            key = f"searches.{i}.head" if search.head is not None else f"searches.{i}.preset"
            yield key, unknown_name_message("trained head", head, TRAINED_HEADS), head, "only trained heads search"


def _score(cfg: Any, *, saved: list[str], heads_dir: Path | None) -> Found:
    from ue.corpus import list_inputs

    if heads_dir is None:
        return
    yield from _heads(cfg, saved=saved, heads_dir=heads_dir)
    for i, path in enumerate(cfg.corpus.paths):
        try:
            list_inputs([path], format=cfg.corpus.format, derived_ids=False)
        except (FileNotFoundError, ValueError) as exc:
            yield f"corpus.paths.{i}", str(exc), path, "give an existing file, folder or glob"


def _heads(cfg: Any, *, saved: list[str], heads_dir: Path | None) -> Found:
    """The heads a score or serve stage names: post-hoc, saved by an earlier stage, or fitted already."""
    if heads_dir is None:
        return
    named = [(f"heads.{i}", name) for i, name in enumerate(cfg.heads)]
    named += [("ood", cfg.ood)] if cfg.ood else []
    for key, name in named:
        if name in POST_HOC or name in saved or (heads_dir / name / "head.json").is_file():
            continue
        yield (key, f"no fitted head {name!r}: no earlier stage of this pipeline saves it and {heads_dir / name} "
               "does not exist", name,
               f"fit it in a fit_heads stage (heads: [{{name: {name}}}]) or use {' / '.join(POST_HOC)}"
               + (f"; this pipeline saves {', '.join(saved)}" if saved else ""))


def _model(cfg: Any, **_: Any) -> Found:
    name = getattr(getattr(cfg, "model", None), "name_or_path", None)
    if name and name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().is_dir():
        yield ("model.name_or_path", f"{Path(name).expanduser()} is not a folder", name,
               "give the folder that holds config.json and the weights, or a hub name")


def _lora(cfg: Any, **_: Any) -> Found:
    """PEFT matches a target against the last component of a module's name (``value`` matches
    ``encoder.layer.0.attention.self.value``); a checkpoint names every module that holds weights."""
    from ue.config.paths import checkpoint_tensors, resolve_model_path

    lora, model = getattr(cfg, "lora", None), getattr(cfg, "model", None)
    if lora is None or model is None:
        return
    tensors = checkpoint_tensors(resolve_model_path(model.name_or_path))
    if tensors is None:
        return  # not a local safetensors checkpoint: the stage checks on the real model
    modules = {name.rsplit(".", 2)[-2] for name in tensors if name.count(".")}
    linear = sorted({leaf for name, shape in tensors.items() if name.endswith(".weight") and len(shape) == 2
                     and name.count(".") and "embed" not in (leaf := name.rsplit(".", 2)[-2])})
    for i, target in enumerate(lora.target_modules):
        if target not in modules:
            yield (f"lora.target_modules.{i}", f"{model.name_or_path} has no module named {target!r}", target,
                   f"its weight matrices are in: {', '.join(linear)}")


def _data(cfg: Any, **_: Any) -> Found:
    from ue.config.paths import DATA_DIR_ENV, data_root
    from ue.data import DataError, resolve_split_file

    data = getattr(cfg, "data", None)
    if data is None or not hasattr(data, "splits"):
        return
    carved = data.val_from_train is not None
    splits = [s for s in _splits_read(cfg) if not (carved and s == "val")] + ["train"] * carved
    for split in dict.fromkeys(splits):
        try:
            found = resolve_split_file(data.name, data.splits[split])
        except DataError as exc:
            yield f"data.splits.{split}", str(exc), data.splits[split], ""
            continue
        if found is None and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
            root = os.environ.get(DATA_DIR_ENV, "")
            where = (f"${DATA_DIR_ENV}={root}" + ("" if data_root() else " (not a folder)")) if root else \
                f"${DATA_DIR_ENV} (unset)"
            yield ("data.name", f"no local dataset {data.name!r}: not a file, not a folder here or under {where}, "
                   "and the hub is off (HF_HUB_OFFLINE=1)", data.name,
                   f"set {DATA_DIR_ENV} to the folder that holds {data.name}/, or give a file path")
            return


def _splits_read(cfg: Any) -> list[str]:
    """The splits a stage reads: extract its ``splits``, finetune train and val."""
    wanted = getattr(cfg, "splits", None)
    return list(wanted) if wanted else ["train", "val"]


def _saves(stage: str, cfg: Any) -> list[str]:
    """Folders under heads/ that ``stage`` writes."""
    if stage == "fit_heads":
        return [entry.key for entry in cfg.heads]
    if stage == "tune":
        return [search.name for search in cfg.searches]
    return []
