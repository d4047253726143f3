"""What is kept: datasets, the session folder and its reports."""

from .checkpoints import (
    CheckpointError,
    list_checkpoints,
    load_tensors,
    read_resume,
    save_checkpoint,
    save_resume,
    verify_checkpoint,
    verify_file,
)
from .corpus import embedded_fields, load_embedded
from .datasets import DataError, Dataset, TaskField
from .faults import crash_point
from .files import load_file, read_texts
from .outage import StorageUnavailable
from .session import (
    Session,
    atomic_write_bytes,
    json_safe,
    read_json,
    remove_stale_temp_files,
    with_stable_timestamp,
    write_json,
)

__all__ = [
    "CheckpointError",
    "DataError",
    "Dataset",
    "Session",
    "StorageUnavailable",
    "TaskField",
    "atomic_write_bytes",
    "crash_point",
    "embedded_fields",
    "json_safe",
    "list_checkpoints",
    "load_embedded",
    "load_file",
    "load_tensors",
    "read_json",
    "read_resume",
    "read_texts",
    "remove_stale_temp_files",
    "save_checkpoint",
    "save_resume",
    "verify_checkpoint",
    "verify_file",
    "with_stable_timestamp",
    "write_json",
]
