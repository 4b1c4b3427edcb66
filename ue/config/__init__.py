"""Config is data: YAML validated by typed pydantic models, with ``key.sub=value`` overrides.

Imports only pydantic, yaml and the standard library, so command lines that read config start fast.

>>> from ue.config import DataConfig, load_config
>>> cfg = load_config(DataConfig, data={"name": "sst2"}, overrides=["max_length=64"])
>>> cfg.max_length
64
"""

from ue.config._base import ConfigModel
from ue.config.loading import (
    ConfigError,
    ConfigIssue,
    config_hash,
    dump_config,
    load_config,
    merge,
    parse_overrides,
    stage_hash,
)
from ue.config.models import (
    COLUMN_NAMES,
    SPLIT_NAMES,
    DataConfig,
    HeadSpec,
    LoraConfig,
    ModelConfig,
    RayResources,
    RunConfig,
    Task,
)
from ue.config.paths import DATA_DIR_ENV, data_root

__all__ = [
    "COLUMN_NAMES",
    "DATA_DIR_ENV",
    "SPLIT_NAMES",
    "ConfigError",
    "ConfigIssue",
    "ConfigModel",
    "DataConfig",
    "HeadSpec",
    "LoraConfig",
    "ModelConfig",
    "RayResources",
    "RunConfig",
    "Task",
    "config_hash",
    "data_root",
    "dump_config",
    "load_config",
    "merge",
    "parse_overrides",
    "stage_hash",
]
