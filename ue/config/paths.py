"""Where real datasets live on this machine: the data-root setting."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "UE_DATA_DIR"
"""Environment variable naming the folder that holds one sub-folder per dataset (``<root>/<name>/``)."""


def data_root() -> Path | None:
    """The data root from ``$UE_DATA_DIR``, or None when it is unset, empty or not an existing folder.

    Dataset names that are not found under the root resolve to the Hugging Face Hub instead, so a
    missing root is not an error here.
    """
    raw = os.environ.get(DATA_DIR_ENV, "").strip()
    if not raw:
        return None
    root = Path(raw).expanduser()
    return root if root.is_dir() else None
