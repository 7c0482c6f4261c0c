"""Read back what an endpoint's AI Gateway recorded: usage per request and the inference
(payload) table, as pandas DataFrames.

- On Databricks the rows are Unity Catalog tables: the payload table
  ``<catalog>.<schema>.<prefix>_payload`` and the system table
  ``system.serving.endpoint_usage`` (joined with ``system.serving.served_entities`` for the
  endpoint's name), read with the notebook's Spark session; they fill within the hour
  (https://docs.databricks.com/aws/en/ai-gateway/configure-ai-gateway-endpoints).
- On the local target the local workspace writes the same columns as JSON lines under
  its state directory (``ptdeploy.workspace.tables``) as requests are answered; pandas
  reads them, and so does Spark (``spark.read.json(str(local_path(name)))``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptdeploy.names import USAGE_TABLE
from ptdeploy.state import gateway_table_path
from ptdeploy.targets import Target

if TYPE_CHECKING:
    import pandas as pd

USAGE_COLUMNS = (
    "databricks_request_id",
    "client_request_id",
    "request_time",
    "endpoint_name",
    "served_entity_id",
    "requester",
    "status_code",
    "request_streaming",
    "input_token_count",
    "output_token_count",
    "total_token_count",
)
PAYLOAD_COLUMNS = (
    "request_date",
    "databricks_request_id",
    "client_request_id",
    "request_time",
    "status_code",
    "sampling_fraction",
    "execution_duration_ms",
    "request",
    "response",
    "served_entity_id",
    "logging_error_codes",
    "requester",
)


def local_path(table: str) -> Path:
    """The JSON-lines file of ``table`` in the local workspace's state directory."""
    return gateway_table_path(table)


def _local(table: str, columns: tuple[str, ...]) -> pd.DataFrame:
    import pandas as pd

    path = local_path(table)
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=list(columns))
    frame = pd.read_json(path, lines=True, dtype=False)
    return frame.reindex(columns=[*columns, *(c for c in frame.columns if c not in columns)])


def _spark() -> Any:
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        return None
    return SparkSession.getActiveSession()


def read_payload(table: str, target: str = "local") -> pd.DataFrame:
    """Rows of the inference table ``table`` (``<catalog>.<schema>.<prefix>_payload``)."""
    if Target(target) is Target.LOCAL:
        return _local(table, PAYLOAD_COLUMNS)
    spark = _spark()
    if spark is None:
        raise RuntimeError(f"reading {table} on Databricks needs the notebook's Spark session")
    return spark.table(table).toPandas()


def read_usage(endpoint_name: str, target: str = "local") -> pd.DataFrame:
    """Usage-tracking rows (tokens per request) of ``endpoint_name``."""
    if Target(target) is Target.LOCAL:
        frame = _local(USAGE_TABLE, USAGE_COLUMNS)
        return frame[frame["endpoint_name"] == endpoint_name].reset_index(drop=True)
    spark = _spark()
    if spark is None:
        raise RuntimeError(
            f"reading {USAGE_TABLE} on Databricks needs the notebook's Spark session"
        )
    query = (
        f"SELECT u.* FROM {USAGE_TABLE} u JOIN system.serving.served_entities e "
        "ON u.served_entity_id = e.served_entity_id WHERE e.endpoint_name = :endpoint"
    )
    return spark.sql(query, args={"endpoint": endpoint_name}).toPandas()
