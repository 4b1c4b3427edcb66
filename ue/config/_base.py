"""The base class of every config model."""

from __future__ import annotations

import pydantic


class ConfigModel(pydantic.BaseModel):
    """A self-checking, immutable config object.

    Unknown keys are errors (a typo must not silently fall back to a default), instances are frozen
    (the resolved config saved with a stage is the one it ran with), and defaults go through the same
    validators as given values.
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, validate_default=True)
