"""The estimator contract every uncertainty head keeps (DESIGN.md, "Heads").

``__init__`` stores keyword parameters only; ``fit`` learns state into attributes ending in ``_``
and returns ``self``; ``uncertainty`` returns one float per row, **higher = more uncertain**.
``requires`` / ``fit_requires`` name the feature columns each reads, so a runner can stream only
those. ``save``/``load`` use ``head.safetensors`` (learned tensors) + ``head.json`` (params, state).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ue.artifacts import atomic_directory, read_json
from ue.features import select_columns


class NotFittedError(RuntimeError):
    """``uncertainty`` or ``save`` was called before ``fit``."""


class UncertaintyHead:
    """Base class: parameter handling, column selection and persistence."""

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]]
    """Feature columns read by :meth:`uncertainty`."""
    fit_requires: ClassVar[tuple[str, ...]] = ()
    """Feature columns read by :meth:`fit`."""
    error_probability: ClassVar[bool] = False
    """True when the score is itself an estimate of P(error) in [0, 1] (so ``1 - U`` is a
    confidence that ECE can judge)."""

    # -- parameters ---------------------------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY]

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._param_names()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if k != "classifier")
        return f"{type(self).__name__}({args})"

    # -- estimator API ------------------------------------------------------------------------------
    def fit(self, features: Any, val: Any = None) -> UncertaintyHead:
        """Learn from ``features`` (train or calibration split); ``val`` is used for selection only."""
        return self

    def uncertainty(self, features: Any) -> np.ndarray:
        """Scores of shape (n,), float64, higher = more uncertain."""
        self._check_fitted()
        cols = select_columns(features, self.requires, who=f"head {self.name!r}")
        return np.asarray(self._score(cols), dtype=np.float64)

    def _score(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def _fit_columns(self, features: Any, *, split: str = "fit") -> dict[str, np.ndarray]:
        return select_columns(features, self.fit_requires, who=f"head {self.name!r} ({split} split)")

    # -- learned state ------------------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        """Learned tensors to persist; empty for heads without learned tensors."""
        return {}

    def _state_meta(self) -> dict[str, Any]:
        """JSON-serialisable learned state (fit metrics, fitted scalars)."""
        return {}

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Inverse of ``_state_tensors`` / ``_state_meta``."""

    def _is_fitted(self) -> bool:
        return True

    def _check_fitted(self) -> None:
        if not self._is_fitted():
            raise NotFittedError(f"head {self.name!r} is not fitted: call fit(features) first")

    # -- persistence --------------------------------------------------------------------------------
    def _json_params(self) -> dict[str, Any]:
        return self.get_params()

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``head.json`` and ``head.safetensors`` atomically into ``directory``."""
        from safetensors.torch import save_file

        self._check_fitted()
        with atomic_directory(directory) as tmp:
            tensors = {k: v.detach().cpu().contiguous() for k, v in self._state_tensors().items()}
            save_file(tensors, str(tmp / "head.safetensors"))
            doc = {"name": self.name, "params": self._json_params(), "state": self._state_meta()}
            (tmp / "head.json").write_text(_dumps(doc), encoding="utf-8")
            self._save_parts(tmp)
        return Path(directory)

    def _save_parts(self, directory: Path) -> None:
        """Extra files of a head that holds other heads (``Calibrated``: its base in ``base/``)."""

    @classmethod
    def _load_parts(cls, directory: Path) -> dict[str, Any]:
        """Constructor arguments read back from what :meth:`_save_parts` wrote."""
        return {}

    @classmethod
    def load(cls, directory: str | os.PathLike) -> UncertaintyHead:
        """Rebuild a fitted head saved by :meth:`save`."""
        from safetensors.torch import load_file

        doc = read_json(Path(directory) / "head.json")
        if doc.get("name") != cls.name:
            raise ValueError(f"{directory}: holds head {doc.get('name')!r}, not {cls.name!r}")
        head = cls(**doc["params"], **cls._load_parts(Path(directory)))
        head._restore(load_file(str(Path(directory) / "head.safetensors")), doc.get("state", {}))
        return head


def _dumps(doc: dict[str, Any]) -> str:
    import json

    return json.dumps(doc, indent=2, sort_keys=True, allow_nan=True) + "\n"
