"""What is kept: datasets, the session folder and its reports."""

from .datasets import (
    DataError,
    Dataset,
    TaskField,
    embedded_fields,
    load_embedded,
    load_file,
)
from .session import Session, atomic_write_bytes, json_safe, read_json, write_json

__all__ = [
    "DataError",
    "Dataset",
    "Session",
    "TaskField",
    "atomic_write_bytes",
    "embedded_fields",
    "json_safe",
    "load_embedded",
    "load_file",
    "read_json",
    "write_json",
]
