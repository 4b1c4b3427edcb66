"""Common machinery of the trained heads ALIEN and AdUE (arXiv 2505.15443).

Both start from an exact copy of the fine-tuned model's classification module (``classifier``),
train it on cached hidden states to predict the frozen model's error ``e = 1[pred != label]``, and
score with the trained copy. The model's own prediction is untouched.
"""

from __future__ import annotations

import copy
import numbers
from typing import Any, ClassVar

import numpy as np
import torch

from ue.features import error_indicator
from ue.heads._packed import PackCallback, PackedConfig, train_error_heads
from ue.heads._training import EpochCallback, FitResult, score_rows, train_error_head
from ue.heads.base import UncertaintyHead
from ue.heads.modules import Classifier, ClassifierSpec

INITS = ("copy", "random")
PER_CONFIG = ("alpha", "beta", "lr", "epochs", "seed", "patience", "init", "classifier")
"""Parameters that may differ between the heads of one pack (:func:`fit_packed`)."""


class TrainedErrorHead(UncertaintyHead):
    """Base of ALIEN and AdUE: subclasses define ``_score_t`` (the score U) and ``_anchor``."""

    requires: ClassVar[tuple[str, ...]] = ("hidden",)
    fit_requires: ClassVar[tuple[str, ...]] = ("hidden", "logits", "label", "pred")
    error_probability = True

    def _score_t(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _anchor(self, logits: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _check_params(self) -> None:
        checks = {
            "alpha": self.alpha >= 0, "beta": self.beta >= 0, "lr": self.lr > 0,
            "epochs": self.epochs >= 0, "batch_size": self.batch_size >= 1,
        }
        whole = [k for k in ("epochs", "batch_size") if isinstance(getattr(self, k), bool)
                 or not isinstance(getattr(self, k), numbers.Integral)]
        if whole:
            got = ", ".join(f"{k}={getattr(self, k)!r}" for k in whole)
            raise ValueError(f"{self.name}: {got} must be an integer (e.g. epochs=20)")
        p = self.patience
        if p is not None and (isinstance(p, bool) or not isinstance(p, numbers.Integral) or p < 1):
            raise ValueError(f"{self.name}: patience={self.patience!r} must be null or an integer >= 1 (e.g. 5)")
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            got = ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
            raise ValueError(f"{self.name}: invalid {got} (alpha, beta, epochs >= 0; lr > 0; batch_size >= 1)")
        if self.init not in INITS:
            raise ValueError(f"{self.name}: init={self.init!r}; allowed: {', '.join(INITS)}")
        if not isinstance(self.classifier, Classifier):
            raise ValueError(
                f"{self.name}: needs classifier=<the fine-tuned model's classification module> "
                "(ue.heads.modules.classifier_from_model or load_classifier), got "
                f"{type(self.classifier).__name__}"
            )

    def _initial_module(self) -> Classifier:
        module = copy.deepcopy(self.classifier).float()
        if self.init == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                for m in module.modules():
                    if isinstance(m, torch.nn.Linear):
                        m.reset_parameters()
        return module

    def fit(self, features: Any, val: Any = None, *, on_epoch: EpochCallback | None = None) -> TrainedErrorHead:
        """Train on ``features`` (train or calibration split); select the epoch on ``val`` ROC-AUC,
        stopping after ``patience`` epochs without a better one.

        ``on_epoch(epoch, metrics)`` is called after every epoch (used by Ray Tune for ASHA).
        """
        self._check_params()
        cols = self._fit_columns(features, split="fit")
        v = self._fit_columns(val, split="val") if val is not None else None
        self._check_shapes(cols["hidden"], cols["logits"])
        module = self._initial_module()
        result = train_error_head(
            module, score_fn=self._score_t, hidden=cols["hidden"], errors=error_indicator(cols),
            anchor=self._anchor(cols["logits"]),
            val_hidden=None if v is None else v["hidden"],
            val_errors=None if v is None else error_indicator(v),
            alpha=self.alpha, beta=self.beta, lr=self.lr, epochs=self.epochs,
            batch_size=self.batch_size, seed=self.seed, patience=self.patience, on_epoch=on_epoch,
        )
        self._keep(module, result)
        return self

    def _keep(self, module: Classifier, result: FitResult) -> None:
        module.load_state_dict(result.state)
        self.module_ = module.eval().requires_grad_(False)
        self.best_epoch_, self.history_ = result.best_epoch, result.history

    def _check_shapes(self, hidden: np.ndarray, logits: np.ndarray) -> None:
        spec = self.classifier.spec
        if hidden.ndim != 2 or hidden.shape[1] != spec.hidden_size:
            raise ValueError(
                f"{self.name}: hidden has shape {hidden.shape}, the classifier expects (n, {spec.hidden_size})"
            )
        if logits.shape[1] != spec.num_labels:
            raise ValueError(
                f"{self.name}: logits have {logits.shape[1]} classes, the classifier {spec.num_labels}"
            )

    def _score(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        hidden = torch.as_tensor(np.ascontiguousarray(cols["hidden"]), dtype=torch.float32)
        return score_rows(self.module_, self._score_t, hidden).numpy()

    def _is_fitted(self) -> bool:
        return hasattr(self, "module_")

    def _json_params(self) -> dict[str, Any]:
        return {**self.get_params(), "classifier": None}

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"module.{k}": v for k, v in self.module_.state_dict().items()}

    def _state_meta(self) -> dict[str, Any]:
        return {"spec": self.module_.spec.to_dict(), "best_epoch": self.best_epoch_, "history": self.history_}

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        module = Classifier(ClassifierSpec(**meta["spec"]))
        module.load_state_dict({k.removeprefix("module."): v for k, v in tensors.items()})
        self.module_ = module.eval().requires_grad_(False)
        self.best_epoch_, self.history_ = meta["best_epoch"], meta["history"]


def pack_key(head: UncertaintyHead) -> tuple[Any, ...] | None:
    """Heads with the same key can be fitted as one pack (:func:`fit_packed`); None: not a trained head."""
    if not isinstance(head, TrainedErrorHead):
        return None
    shared = {k: v for k, v in head.get_params().items() if k not in PER_CONFIG}
    spec = head.classifier.spec if isinstance(head.classifier, Classifier) else None
    return (type(head), spec, tuple(sorted(shared.items())))


def fit_packed(
    heads: list[TrainedErrorHead], features: Any, val: Any = None, *, on_epoch: PackCallback | None = None
) -> list[TrainedErrorHead]:
    """Fit heads of one kind together (``ue.heads._packed``); each ends as its own ``fit`` leaves it.

    The heads may differ in ``alpha``, ``beta``, ``lr``, ``epochs``, ``seed``, ``patience``, ``init``
    and their classifier's weights, not in anything else (:func:`pack_key`). ``on_epoch(epoch,
    {head index: metrics})`` after every epoch may return head indices to stop now (successive
    halving); a stopped head keeps its best epoch so far.

    Raises:
        ValueError: no heads, or heads that cannot share a pack.
    """
    if not heads:
        raise ValueError("fit_packed needs at least one head")
    keys = {pack_key(h) for h in heads}
    if None in keys or len(keys) != 1:
        raise ValueError("a pack holds trained heads (alien, adue) of one kind, batch size and classifier shape; "
                         f"got {sorted({h.name for h in heads})} with {len(keys)} different settings")
    for head in heads:
        head._check_params()
    first = heads[0]
    cols = first._fit_columns(features, split="fit")
    v = first._fit_columns(val, split="val") if val is not None else None
    first._check_shapes(cols["hidden"], cols["logits"])
    modules = [h._initial_module() for h in heads]
    results = train_error_heads(
        modules, [PackedConfig(alpha=h.alpha, beta=h.beta, lr=h.lr, epochs=h.epochs, seed=h.seed, patience=h.patience)
                  for h in heads],
        score_fn=first._score_t, hidden=cols["hidden"], errors=error_indicator(cols),
        anchor=first._anchor(cols["logits"]), val_hidden=None if v is None else v["hidden"],
        val_errors=None if v is None else error_indicator(v), batch_size=first.batch_size, on_epoch=on_epoch,
    )
    for head, module, result in zip(heads, modules, results, strict=True):
        head._keep(module, result)
    return heads
