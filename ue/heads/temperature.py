"""Temperature scaling: ``U = 1 - max_c softmax(z / T)_c`` with T fitted on validation NLL.

Guo et al., "On Calibration of Modern Neural Networks", ICML 2017. ``log T`` is optimised with LBFGS
so T stays positive.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ue.heads._math import msp_np
from ue.heads.base import UncertaintyHead


class TemperatureScaling(UncertaintyHead):
    """Reads ``logits`` (n, C); fitting also reads ``label``. Higher = more uncertain.

    ``fit(train, val)`` fits T on ``val`` when given (METHODS.md: the validation split), else on
    the features passed first.
    """

    name = "temperature"
    requires = ("logits",)
    fit_requires = ("logits", "label")
    error_probability = True

    def __init__(self, *, max_iter: int = 100) -> None:
        self.max_iter = max_iter

    def fit(self, features: Any, val: Any = None) -> TemperatureScaling:
        if self.max_iter < 1:
            raise ValueError(f"temperature: max_iter must be >= 1, got {self.max_iter}")
        cols = self._fit_columns(val if val is not None else features, split="val")
        logits = torch.as_tensor(cols["logits"], dtype=torch.float64)
        labels = torch.as_tensor(cols["label"], dtype=torch.long)
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
            loss.backward()
            return loss

        opt.step(closure)
        self.temperature_ = float(log_t.detach().exp())
        if not math.isfinite(self.temperature_):
            raise FloatingPointError("temperature: the fitted T is not finite; check the logits")
        return self

    def _score(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        return msp_np(cols["logits"], self.temperature_)

    def _is_fitted(self) -> bool:
        return hasattr(self, "temperature_")

    def _state_meta(self) -> dict[str, Any]:
        return {"temperature": self.temperature_}

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.temperature_ = float(meta["temperature"])
