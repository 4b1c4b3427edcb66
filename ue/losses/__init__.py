"""Fine-tuning losses, registered by name in ``LOSSES``: ``ce``, ``ua_clm``, ``ual``.

Every loss is ``loss(logits, labels, **batch) -> scalar Tensor``. ``logits`` and ``labels`` are
positional-only, so a trainer can pass the whole batch (``loss(out.logits, batch["labels"], **batch)``)
and each loss reads the keys it needs and ignores the rest. 3-D logits are token level and, by
default, causal-LM *unshifted* inputs that the loss shifts itself; token classification passes
``shift=False``. Label -100 marks positions that are not scored.
"""

from ue.losses._common import IGNORE_INDEX, LOSSES, Loss
from ue.losses.ce import cross_entropy
from ue.losses.ua_clm import ua_clm, ua_clm_beta_schedule, ua_clm_mixed
from ue.losses.ual import ual

__all__ = [
    "IGNORE_INDEX",
    "LOSSES",
    "Loss",
    "cross_entropy",
    "ua_clm",
    "ua_clm_beta_schedule",
    "ua_clm_mixed",
    "ual",
]
