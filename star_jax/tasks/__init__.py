"""Fitness data: the MAD synthetic tasks, zoology's MQAR and byte-level language modelling.
Every task is built by `make(name, **config)` and offers the same sampling and test-set API."""
from .base import (
    IGNORE_INDEX,
    GeneratedTask,
    Task,
    TaskConfig,
    TaskConfigError,
    config_class,
    leakage_check,
    make,
    register_task,
    task_names,
)
from .lm import ByteLMConfig, ByteLMTask, bits_per_byte, load_corpus, perplexity
from .mad import (
    CompressionConfig,
    FuzzyInContextRecallConfig,
    InContextRecallConfig,
    MemorizationConfig,
    NoisyInContextRecallConfig,
    SelectiveCopyingConfig,
    compression,
    fuzzy_in_context_recall,
    in_context_recall,
    memorization,
    memorization_map,
    noisy_in_context_recall,
    selective_copying,
)
from .mqar import MQARConfig, mqar
from .settings import MADSetting, mad_baselines, mad_settings

__all__ = [
    "IGNORE_INDEX", "GeneratedTask", "Task", "TaskConfig", "TaskConfigError", "config_class",
    "leakage_check", "make", "register_task", "task_names",
    "ByteLMConfig", "ByteLMTask", "bits_per_byte", "load_corpus", "perplexity",
    "CompressionConfig", "FuzzyInContextRecallConfig", "InContextRecallConfig",
    "MemorizationConfig", "NoisyInContextRecallConfig", "SelectiveCopyingConfig",
    "compression", "fuzzy_in_context_recall", "in_context_recall", "memorization",
    "memorization_map", "noisy_in_context_recall", "selective_copying",
    "MQARConfig", "mqar", "MADSetting", "mad_baselines", "mad_settings",
]
