"""Post-hoc calibration of any head's score into P(error), on a held-out share of val.

``Calibrated(head=h, method="beta")`` splits the validation rows by a seeded hash of their id
(``ue.data.id_share``): ``fraction`` of them calibrate, the rest are the selection data ``h`` sees
as its ``val``. ``h`` is fitted as usual, then a monotone map from its score to the probability that
the model is wrong is fitted on the calibration share against ``e = 1[pred != label]``:

- ``beta`` (the default, for heads whose score is in [0, 1]: MSP, temperature, ALIEN, AdUE):
  ``logit P(e = 1 | s) = a * log(s) - b * log(1 - s) + c`` with ``a, b >= 0`` (Kull, Silva Filho &
  Flach, "Beta calibration", AISTATS 2017): a term whose coefficient comes out negative is dropped
  and the rest refitted, so the map never decreases. It contains Platt on ``logit(s)`` (``a = b``)
  and fits the scores of entropy-like heads, which a sigmoid of ``logit(s)`` cannot: ALIEN's
  normalised entropy tends to 1 where the model is wrong only half the time. On the MiniLM SST-2
  run of the study, mapping ALIEN on half of val gave test ECE 3.13 with ``beta`` against 6.10 with
  ``platt`` (model max prob: 4.59).
- ``platt``: ``P(e = 1 | s) = sigmoid(a * z + b)`` (Platt, "Probabilistic Outputs for Support
  Vector Machines", 1999). ``z`` is the score standardised on the calibration share; for scores in
  [0, 1] it is their logit first. Works for any score (Mahalanobis distances too). Strictly
  monotone when ``a > 0``, so the ranking metrics are those of ``h``.
- ``isotonic``: the non-decreasing step function of least squares (Zadrozny & Elkan, KDD 2002;
  scikit-learn's ``IsotonicRegression``), interpolated between its knots. Ties on flat steps can
  lower ROC-AUC slightly.

Both logistic fits are unpenalised maximum likelihood (scikit-learn, Newton steps). The result is
an error probability (``error_probability = True``): ECE judges ``1 - U`` and the
accept/abstain threshold reads a number in [0, 1]. Higher = more uncertain, as for every head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch

from ue.data import id_share
from ue.features import error_indicator, select_columns
from ue.heads.base import UncertaintyHead

METHODS = ("beta", "platt", "isotonic")
SALT = "calibrated:"
"""Salt of the id hash (``ue.data.id_share``) that splits val into calibration and selection."""
_EPS = 1e-6


class Calibrated(UncertaintyHead):
    """A fitted ``head`` whose score is mapped to P(error) on a held-out share of val.

    Reads what ``head`` reads to score; fitting reads what ``head`` fits on plus ``id``, ``pred`` and
    ``label`` of val (the calibration target). ``seed`` seeds the id hash, salted apart from the
    val carve-out and fit_heads' calibration split so every split of val stays independent.
    """

    name = "calibrated"
    error_probability: ClassVar[bool] = True

    def __init__(self, *, head: UncertaintyHead | None = None, method: str = "beta", fraction: float = 0.5,
                 seed: int = 1) -> None:
        self.head = head
        self.method = method
        self.fraction = fraction
        self.seed = seed
        if head is not None:
            self.requires = head.requires
            self.fit_requires = tuple(dict.fromkeys((*head.fit_requires, *head.requires, "id", "pred", "label")))

    @property
    def key(self) -> str:
        """The default folder and row name: ``<head>_<method>``, e.g. ``alien_beta``."""
        return f"{self.head.name}_{self.method}"

    def _check_params(self) -> None:
        if not isinstance(self.head, UncertaintyHead):
            raise ValueError(f"calibrated: needs head=<an uncertainty head>, got {type(self.head).__name__}")
        if self.method not in METHODS:
            raise ValueError(f"calibrated: method={self.method!r}; allowed: {', '.join(METHODS)}")
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"calibrated: fraction={self.fraction!r} must be in (0, 1); 0.5 halves val")
        if self.method == "beta" and not self.head.error_probability:
            raise ValueError(f"calibrated: method='beta' maps scores in [0, 1]; head {self.head.name!r} scores "
                             "are not (use method='platt' or 'isotonic')")

    def fit(self, features: Any, val: Any = None, **fit_kwargs: Any) -> Calibrated:
        """Fit ``head`` on ``features`` with the selection share of ``val``, then the map on the rest.

        ``fit_kwargs`` (e.g. ``on_epoch``) go to ``head.fit``.
        """
        self._check_params()
        if val is None:
            raise ValueError("calibrated: needs val (its calibration share fits the map to P(error))")
        cols = select_columns(val, self.fit_requires, who=f"head {self.key!r} (val split)")
        in_calibration = id_share([str(i) for i in cols["id"]], self.fraction, seed=self.seed, salt=SALT)
        if in_calibration.all() or not in_calibration.any():
            raise ValueError(f"calibrated: all {len(in_calibration)} val rows fell in one share "
                             f"(fraction={self.fraction}); val needs more rows")
        calibration = {k: v[in_calibration] for k, v in cols.items()}
        selection = {k: v[~in_calibration] for k, v in cols.items()}
        errors = error_indicator(calibration, who=f"head {self.key!r} (calibration share of val)")
        if errors.min() == errors.max():
            raise ValueError(
                f"calibrated: the calibration share of val ({len(errors)} rows, fraction={self.fraction}) "
                f"has {'no' if errors.max() == 0 else 'only'} errors; a map to P(error) needs both")
        base_fit = (select_columns(features, self.head.fit_requires, who=f"head {self.key!r} (fit split)")
                    if self.head.fit_requires else pa.table({}))
        self.head.fit(base_fit, val={k: selection[k] for k in self.head.fit_requires} or None, **fit_kwargs)
        raw = self.head.uncertainty(calibration)
        {"beta": self._fit_beta, "platt": self._fit_platt, "isotonic": self._fit_isotonic}[self.method](raw, errors)
        self.n_calibration_ = int(len(errors))
        return self

    def _features(self, raw: np.ndarray) -> np.ndarray:
        if self.head.error_probability:
            p = np.clip(raw, _EPS, 1.0 - _EPS)
            return np.log(p) - np.log1p(-p)
        return np.asarray(raw, dtype=np.float64)

    def _fit_platt(self, raw: np.ndarray, errors: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        x = self._features(raw)
        self.center_, self.scale_ = float(x.mean()), float(x.std()) or 1.0
        z = ((x - self.center_) / self.scale_)[:, None]
        model = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-10, max_iter=100).fit(z, errors)
        self.slope_, self.intercept_ = float(model.coef_[0, 0]), float(model.intercept_[0])

    def _fit_beta(self, raw: np.ndarray, errors: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        x = _beta_features(raw)
        keep = [0, 1]
        while True:
            model = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-10, max_iter=100)
            model.fit(x[:, keep], errors)
            coef = dict(zip(keep, model.coef_[0], strict=True))
            negative = [k for k in keep if coef[k] < 0]
            if not negative:
                break
            keep.remove(min(negative, key=coef.get))  # the most negative term goes first
            if not keep:
                model = None
                break
        # No monotone dependence at all: the map is the calibration share's error rate.
        self.beta_coef_ = [float(coef.get(k, 0.0)) if model is not None else 0.0 for k in (0, 1)]
        rate = float(np.clip(errors.mean(), _EPS, 1 - _EPS))
        self.intercept_ = float(model.intercept_[0]) if model is not None else float(np.log(rate / (1 - rate)))

    def _fit_isotonic(self, raw: np.ndarray, errors: np.ndarray) -> None:
        from sklearn.isotonic import IsotonicRegression

        model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(raw, errors)
        self.knots_x_ = np.asarray(model.X_thresholds_, dtype=np.float64)
        self.knots_y_ = np.asarray(model.y_thresholds_, dtype=np.float64)

    def _score(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        return self.transform(self.head.uncertainty(cols))

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """P(error), shape (n,), of scores ``raw`` (n,) of the wrapped head; non-decreasing in ``raw``
        (Platt: when its slope is positive)."""
        if self.method == "beta":
            return _sigmoid(_beta_features(raw) @ np.asarray(self.beta_coef_) + self.intercept_)
        if self.method == "platt":
            z = (self._features(raw) - self.center_) / self.scale_
            return _sigmoid(self.slope_ * z + self.intercept_)
        return np.interp(raw, self.knots_x_, self.knots_y_)

    def _is_fitted(self) -> bool:
        return hasattr(self, "n_calibration_") and self.head._is_fitted()

    # -- persistence: the map in head.json, the fitted head in base/ -------------------------------
    def get_params(self) -> dict[str, Any]:
        return {"method": self.method, "fraction": self.fraction, "seed": self.seed}

    def _state_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"head": self.head.name, "n_calibration": self.n_calibration_}
        if self.method == "beta":
            meta.update(coef=self.beta_coef_, intercept=self.intercept_)
        if self.method == "platt":
            meta.update(center=self.center_, scale=self.scale_, slope=self.slope_, intercept=self.intercept_)
        return meta

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        if self.method != "isotonic":
            return {}
        return {"knots_x": torch.from_numpy(self.knots_x_), "knots_y": torch.from_numpy(self.knots_y_)}

    def _save_parts(self, directory: Path) -> None:
        self.head.save(directory / "base")

    @classmethod
    def _load_parts(cls, directory: Path) -> dict[str, Any]:
        from ue.heads import load_head

        return {"head": load_head(directory / "base")}

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.n_calibration_ = int(meta["n_calibration"])
        if self.method == "beta":
            self.beta_coef_, self.intercept_ = [float(c) for c in meta["coef"]], float(meta["intercept"])
        elif self.method == "platt":
            self.center_, self.scale_ = float(meta["center"]), float(meta["scale"])
            self.slope_, self.intercept_ = float(meta["slope"]), float(meta["intercept"])
        else:
            self.knots_x_, self.knots_y_ = tensors["knots_x"].numpy(), tensors["knots_y"].numpy()


def _beta_features(raw: np.ndarray) -> np.ndarray:
    """(n, 2): ``log(s)`` and ``-log(1 - s)`` of scores clipped into (0, 1)."""
    s = np.clip(np.asarray(raw, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.c_[np.log(s), -np.log1p(-s)]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
