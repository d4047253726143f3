"""What is trained: the byte tokenizer, the reference Red Heart model, its groups and the engine."""

from .groups import GroupSpec
from .red_heart import PRESETS, RedHeart, RedHeartConfig, build_model, preset_config
from .tasks import EMBEDDED_TASKS, TaskSpec
from .tokenizer import CLS_ID, PAD_ID, VOCAB_SIZE, ByteTokenizer

__all__ = [
    "CLS_ID",
    "EMBEDDED_TASKS",
    "PAD_ID",
    "PRESETS",
    "VOCAB_SIZE",
    "ByteTokenizer",
    "GroupSpec",
    "RedHeart",
    "RedHeartConfig",
    "TaskSpec",
    "build_model",
    "preset_config",
]
