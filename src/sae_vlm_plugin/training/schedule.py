"""The paper's learning rate and its schedule (dictionary_learning's ``get_lr_schedule``)."""

from __future__ import annotations

import math
from collections.abc import Callable


def paper_learning_rate(d_sae: int) -> float:
    """``2e-4 / sqrt(d_sae / 2^14)``: the 1/sqrt(width) scaling of Gao et al. that
    dictionary_learning applies when no learning rate is given (the paper prints it as
    ``16 / (125 sqrt(d_sae))``)."""
    if d_sae < 1:
        raise ValueError(f"d_sae must be >= 1, got {d_sae}")
    return 2e-4 / math.sqrt(d_sae / 2**14)


def paper_lr_factor(
    total_steps: int, warmup_steps: int = 1000, decay_start: int | None = None
) -> Callable[[int], float]:
    """Multiplier of the base learning rate at step ``t`` (0-based, the step being taken):
    ``t / warmup_steps`` during the warm-up (so the first step has learning rate 0), then 1,
    then ``(total_steps - t) / (total_steps - decay_start)`` from ``decay_start`` on.

    SAELens' own linear warm-up gives ``(t + 1) / warmup_steps`` (one step ahead); the paper's
    runs pass ``decay_start = total_steps - 1``, which leaves the rate constant to the end."""
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}"
        )
    if decay_start is not None and not warmup_steps < decay_start < total_steps:
        raise ValueError(
            f"decay_start must be in (warmup_steps={warmup_steps}, total_steps={total_steps}), "
            f"got {decay_start}"
        )

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        if decay_start is not None and step >= decay_start:
            return (total_steps - step) / (total_steps - decay_start)
        return 1.0

    return factor
