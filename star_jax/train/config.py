"""The training hyper-parameters of one candidate, as one frozen, validated record.
Everything that changes a training run's numbers lives here, so a run is reproducible from it."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from star_jax._util.validate import ConfigError, Fields, unknown_fields

__all__ = ["TrainConfig", "ConfigError"]

@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of single-candidate training (AdamW, warm-up + cosine, clipping).

    Fields:
        steps: number of optimizer steps, >= 1.
        batch_size: sequences per step, >= 1.
        lr: peak learning rate, finite and > 0.
        weight_decay: decoupled AdamW weight decay (multiplied by the current learning rate, as in
            optax and PyTorch), finite and >= 0. Applied only to parameters with ndim >= 2.
        warmup_steps: linear warm-up length, 0 <= warmup_steps <= steps.
        min_lr_ratio: the cosine decay ends at ``lr * min_lr_ratio``, in [0, 1].
        clip_norm: global gradient-norm clipping threshold, finite and > 0, or None for no clipping.
        b1: AdamW first-moment decay, in [0, 1).
        b2: AdamW second-moment decay, in [0, 1).
        eval_every: evaluate on the test set every this many steps (and always after the last
            step); 0 evaluates only at the end. >= 0.
        eval_batch_size: sequences per evaluation batch, >= 1. Used by ``fit`` of other flax
            modules and by the whole-population strategies; a genome's backbone
            (``star_jax.train``) is evaluated at ``batch_size`` with its training programs, so
            evaluation compiles nothing (the metrics are the same sums over the same test set).
        seed: the run's seed (parameter init and batch order), an integer in [0, 2**32).
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    clip_norm: float | None = 1.0
    b1: float = 0.9
    b2: float = 0.95
    eval_every: int = 0
    eval_batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        check = Fields("TrainConfig", self)
        for name in ("steps", "batch_size", "eval_batch_size"):
            check.int(name, lo=1)
        check.int("eval_every", lo=0, accepted="an integer >= 0 (0 = evaluate only after the last step)")
        check.int("warmup_steps", lo=0, hi=self.steps,
                  accepted=f"an integer in [0, steps={self.steps}]")
        check.int("seed", lo=0, hi=2**32 - 1, accepted="an integer in [0, 2**32)")
        check.real("lr", lo=0, lo_open=True)
        check.real("weight_decay", lo=0)
        check.real("min_lr_ratio", lo=0, hi=1)
        if self.clip_norm is not None:
            check.real("clip_norm", lo=0, lo_open=True,
                       accepted="a finite number > 0, or None to disable clipping")
        for name in ("b1", "b2"):
            check.real(name, lo=0, hi=1, hi_open=True)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Returns:
        The names of all fields, in declaration order.
        """
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Build a config from a mapping (e.g. parsed JSON); missing fields take their defaults.

        Arguments:
            data: field name -> value.

        Returns:
            The validated config.

        Raises:
            ConfigError: for an unknown key (the message lists the valid ones) or an invalid value
                (a ``ValueError``).
        """
        error = unknown_fields("TrainConfig", data, cls.field_names())
        if error is not None:
            raise error
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """Returns:
        A JSON-ready dict of all fields (the inverse of ``from_dict``).
        """
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        """Return a copy with some fields changed, validated, rejecting unknown names.

        Arguments:
            **changes: field name -> new value.

        Returns:
            The new config.
        """
        return self.from_dict({**self.to_dict(), **changes})
