"""The MAD benchmark grid as data: 66 task settings (6 baselines plus one-at-a-time harder ones).
Transcribed from MAD's task configs; the MAD score averages best test accuracy over them."""
from __future__ import annotations

import dataclasses
from typing import Any

from .base import Task, make

# Source: the MAD reference implementation (Poli et al. 2024, "Mechanistic Design and Scaling of
# Hybrid Architectures"; repository athms/mad-lab), files configs/tasks/*.yml, expanded as its
# `make_benchmark_mad_configs` does: for each task the baseline, then for every varied field
# each listed value with all other fields at the baseline (one change at a time).
# MAD's `num_train_examples` is our `num_train`; MAD's recall tasks run with multi_query=True,
# our only mode. Counts: recall 11, fuzzy recall 11, noisy recall 14, selective copying 13,
# compression 11, memorization 6 = 66. (The lr {1e-4, 5e-4, 1e-3} x weight decay {0, 0.1}
# sweep of the MAD protocol is a training choice and is not part of these records.)
_MAD_GRID: tuple[tuple[str, dict[str, Any], tuple[tuple[str, tuple], ...]], ...] = (
    ("in_context_recall",
     dict(vocab_size=16, seq_len=128, num_train=12_800),
     (("vocab_size", (32, 64, 128)),
      ("seq_len", (256, 512, 1024)),
      ("num_train", (6400, 3200, 1600, 800)))),
    ("fuzzy_in_context_recall",
     dict(vocab_size=16, seq_len=128, num_train=12_800, k_motif_size=3, v_motif_size=3),
     (("vocab_size", (32, 64, 128)),
      ("seq_len", (256, 512, 1024)),
      ("num_train", (6400, 3200, 1600, 800)))),
    ("noisy_in_context_recall",
     dict(vocab_size=32, noise_vocab_size=16, seq_len=128, num_train=12_800, frac_noise=0.2),
     (("vocab_size", (48, 80, 144)),  # 16 of each are noise tokens
      ("seq_len", (256, 512, 1024)),
      ("num_train", (6400, 3200, 1600, 800)),
      ("frac_noise", (0.4, 0.6, 0.8)))),
    ("selective_copying",
     dict(vocab_size=16, seq_len=256, num_tokens_to_copy=16, num_train=12_800),
     (("vocab_size", (32, 64, 128)),
      ("seq_len", (512, 1024)),
      ("num_train", (6400, 3200, 1600, 800)),
      ("num_tokens_to_copy", (32, 64, 96)))),
    ("compression",
     dict(vocab_size=16, seq_len=32, num_train=12_800),
     (("vocab_size", (32, 64, 128)),
      ("seq_len", (64, 128, 256)),
      ("num_train", (6400, 3200, 1600, 800)))),
    ("memorization",
     dict(vocab_size=256, seq_len=32, num_train=256),
     (("vocab_size", (512, 1024, 2048, 4096, 8192)),)),
)

MAD_NUM_TEST = 1_280


@dataclasses.dataclass(frozen=True)
class MADSetting:
    """One MAD benchmark setting.

    Attributes:
        task: registry name of the task.
        kwargs: the config fields as sorted (name, value) pairs (hashable).
        varied: the field changed from the task's baseline, or "baseline".
    """

    task: str
    kwargs: tuple[tuple[str, Any], ...]
    varied: str = "baseline"

    @property
    def config_kwargs(self) -> dict[str, Any]:
        """The config fields as a dict (pass to `make(task, **config_kwargs)`)."""
        return dict(self.kwargs)

    @property
    def name(self) -> str:
        """A readable id, e.g. "in_context_recall/baseline" or "compression/seq_len=64"."""
        if self.varied == "baseline":
            return f"{self.task}/baseline"
        return f"{self.task}/{self.varied}={self.config_kwargs[self.varied]}"

    def make(self, **overrides) -> Task:
        """Build the task (fields in `overrides`, e.g. seed, replace the setting's)."""
        return make(self.task, **{**self.config_kwargs, **overrides})


def _record(task: str, fields: dict[str, Any], varied: str) -> MADSetting:
    full = dict(fields, num_test=MAD_NUM_TEST)
    return MADSetting(task, tuple(sorted(full.items())), varied)


def mad_settings() -> tuple[MADSetting, ...]:
    """All 66 MAD settings, task by task: the baseline, then each harder variant.

    Transcribed from the MAD reference implementation's task configs (configs/tasks/*.yml of
    athms/mad-lab, expanded one change at a time as its `make_benchmark_mad_configs` does);
    nothing here is guessed. Every setting has a 1,280-example test set.

    Returns:
        A tuple of 66 MADSetting records.
    """
    out = []
    for task, baseline, changes in _MAD_GRID:
        out.append(_record(task, baseline, "baseline"))
        for field, values in changes:
            for value in values:
                out.append(_record(task, {**baseline, field: value}, field))
    return tuple(out)


def mad_baselines() -> tuple[MADSetting, ...]:
    """The 6 MAD baseline settings (one per task), in MAD's task order.

    Returns:
        A tuple of 6 MADSetting records.
    """
    return tuple(s for s in mad_settings() if s.varied == "baseline")
