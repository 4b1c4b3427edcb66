"""ueray's core library: heads, metrics, losses, config, features and artifacts.

Importing ``ue`` is cheap and never imports Ray; the submodules are imported on use, and so is
``ue.Scorer`` (``ue.scorer``: it brings torch and transformers).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Scorer", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Scorer":
        from ue.scorer import Scorer

        return Scorer
    raise AttributeError(f"module 'ue' has no attribute {name!r}")
