"""Uncertainty heads (registry ``HEADS``); every score follows higher = more uncertain."""

from __future__ import annotations

import os
from pathlib import Path

from ue.artifacts import read_json
from ue.heads._trained import fit_packed, pack_key
from ue.heads.adue import AdUE
from ue.heads.alien import Alien
from ue.heads.base import NotFittedError, UncertaintyHead
from ue.heads.calibrated import Calibrated
from ue.heads.entropy import Entropy
from ue.heads.mahalanobis import Mahalanobis
from ue.heads.modules import (
    Classifier,
    ClassifierSpec,
    classifier_from_model,
    load_classifier,
    save_classifier,
)
from ue.heads.msp import MSP
from ue.heads.relative_mahalanobis import RelativeMahalanobis
from ue.heads.temperature import TemperatureScaling
from ue.registry import Registry

HEADS: Registry[type[UncertaintyHead]] = Registry("head")
for _cls in (MSP, Entropy, TemperatureScaling, Mahalanobis, RelativeMahalanobis, AdUE, Alien):
    HEADS.register(_cls.name)(_cls)


def build_head(name: str, **params: object) -> UncertaintyHead:
    """A head from the registry; unknown parameters raise a TypeError naming them and the known ones."""
    cls = HEADS.get(name)
    known = cls._param_names()
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise TypeError(f"head {name!r} has no parameter(s) {', '.join(unknown)}; known: {', '.join(known) or 'none'}")
    return cls(**params)


def load_head(directory: str | os.PathLike) -> UncertaintyHead:
    """Load any saved head, a :class:`Calibrated` wrapper included; its type is read from ``head.json``."""
    name = read_json(Path(directory) / "head.json")["name"]
    return Calibrated.load(directory) if name == Calibrated.name else HEADS.get(name).load(directory)


__all__ = [
    "HEADS", "AdUE", "Alien", "Calibrated", "Classifier", "ClassifierSpec", "Entropy", "MSP", "Mahalanobis",
    "NotFittedError", "RelativeMahalanobis", "TemperatureScaling", "UncertaintyHead", "build_head",
    "classifier_from_model", "fit_packed", "load_classifier", "load_head", "pack_key", "save_classifier",
]
