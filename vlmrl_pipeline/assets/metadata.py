"""Metadata every asset attaches, whatever it made: the environment it ran in and Dagster's table conventions.

Generic on purpose: it reads no asset's folder, so every asset module can import it (``provenance``, which does
read upstream folders, imports the asset definitions instead).
"""

import hashlib
import json

import pandas as pd
from dagster import MetadataValue, TableColumn, TableSchema

from vlmrl_pipeline.core.environment import environment_fingerprint


def environment_metadata() -> dict:
    """``environment`` (python, CUDA, torch, transformers, trl, peft, accelerate, unsloth, vllm, bitsandbytes,
    dagster, GPU) and ``environment_id``, a short hash of it that the UI's metadata plots and tables can compare."""
    fingerprint = environment_fingerprint()
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    return {"environment": MetadataValue.json(fingerprint), "environment_id": digest}


def table_metadata(frame: pd.DataFrame) -> dict:
    """Dagster's table conventions: ``dagster/row_count`` and ``dagster/column_schema`` (each column's dtype), which
    the UI shows on the asset and plots across materializations."""
    schema = TableSchema(columns=[TableColumn(str(name), str(dtype)) for name, dtype in frame.dtypes.items()])
    return {"dagster/row_count": len(frame), "dagster/column_schema": MetadataValue.table_schema(schema)}
