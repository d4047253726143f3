"""What is trained: the byte tokenizer, the reference Red Heart model, its groups and the engine."""

from .groups import GroupSpec, load_groups_file, with_groups
from .hf import HFModelError, HFTextClassifier, HFTokenizer, build_hf, derive_groups
from .memory import TrainShape, disk_plan, plan_memory
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
    "HFModelError",
    "HFTextClassifier",
    "HFTokenizer",
    "RedHeart",
    "RedHeartConfig",
    "TaskSpec",
    "TrainShape",
    "build_hf",
    "build_model",
    "derive_groups",
    "disk_plan",
    "load_groups_file",
    "plan_memory",
    "preset_config",
    "with_groups",
]
