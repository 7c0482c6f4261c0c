"""AI Gateway tables of the local workspace: usage tracking and inference (payload) tables.

On Databricks, an endpoint whose AI Gateway has

- ``usage_tracking_config.enabled`` records each request's token counts in the system
  table ``system.serving.endpoint_usage`` (``databricks_request_id``, ``requester``,
  ``status_code``, ``request_time``, ``input_token_count``, ``output_token_count``,
  ``request_streaming``, ``served_entity_id``...);
- ``inference_table_config`` {catalog_name, schema_name, table_name_prefix, enabled} logs
  each request and response to ``<catalog>.<schema>.<prefix>_payload`` with the columns
  ``request_date``, ``databricks_request_id``, ``client_request_id``, ``request_time``,
  ``status_code``, ``sampling_fraction``, ``execution_duration_ms``, ``request``,
  ``response``, ``served_entity_id``, ``logging_error_codes``, ``requester``; payloads
  over 1 MiB are not logged (``logging_error_codes`` says so), and a streamed response is
  logged as the aggregate of its chunks.

(https://docs.databricks.com/aws/en/ai-gateway/configure-ai-gateway-endpoints and its
"AI Gateway-enabled inference table schema" and "usage tracking table schemas" sections.)

Locally each table is a JSON-lines file ``<state>/workspace/tables/<table name>.jsonl``,
one row per request, appended as the request is answered (Databricks fills its Delta
tables within the hour). ``ptdeploy.serving.inference_tables`` reads them back as DataFrames.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ptdeploy.limits import MAX_LOGGED_PAYLOAD_BYTES
from ptdeploy.names import PAYLOAD_SUFFIX, USAGE_TABLE
from ptdeploy.state import gateway_table_path

log = logging.getLogger("ptdeploy.workspace.server")


def payload_table(gateway: dict[str, Any] | None, endpoint: str) -> str | None:
    """The inference table an AI Gateway config logs to (None when it is off)."""
    cfg = (gateway or {}).get("inference_table_config") or {}
    if not cfg.get("enabled", True) or not cfg.get("catalog_name") or not cfg.get("schema_name"):
        return None
    prefix = cfg.get("table_name_prefix") or endpoint  # Databricks' default prefix
    return f"{cfg['catalog_name']}.{cfg['schema_name']}.{prefix}{PAYLOAD_SUFFIX}"


def usage_tracking(gateway: dict[str, Any] | None) -> bool:
    return bool(((gateway or {}).get("usage_tracking_config") or {}).get("enabled"))


def _usage_counts(response: Any) -> tuple[int | None, int | None]:
    usage = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(usage, dict):
        return None, None
    return usage.get("prompt_tokens"), usage.get("completion_tokens")


class GatewayTables:
    """Appends the rows of the usage and payload tables (one lock: lines never interleave)."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = Path(workspace)
        self.lock = threading.Lock()

    def _append(self, table: str, row: dict[str, Any]) -> None:
        line = json.dumps(row, separators=(",", ":"), default=str) + "\n"
        with self.lock:
            path = gateway_table_path(table, self.workspace)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as fh:
                fh.write(line)

    def record(
        self,
        *,
        endpoint: str,
        gateway: dict[str, Any] | None,
        served_entity: str | None,
        request: dict[str, Any],
        response: dict[str, Any] | None,
        status_code: int,
        request_time: float,
        duration_ms: int,
        requester: str,
        streaming: bool,
        client_request_id: str | None = None,
    ) -> None:
        """Write the request's rows to the tables ``gateway`` enables (nothing otherwise).

        A failure to write is logged, never turned into a failed request."""
        payload = payload_table(gateway, endpoint)
        usage = usage_tracking(gateway)
        if payload is None and not usage:
            return
        request_id = str(uuid.uuid4())
        when = datetime.fromtimestamp(request_time, UTC)
        try:
            if usage:
                prompt, completion = _usage_counts(response)
                self._append(
                    USAGE_TABLE,
                    {
                        "databricks_request_id": request_id,
                        "client_request_id": client_request_id,
                        "request_time": when.isoformat(timespec="milliseconds"),
                        "endpoint_name": endpoint,
                        "served_entity_id": served_entity,
                        "requester": requester,
                        "status_code": status_code,
                        "request_streaming": streaming,
                        "input_token_count": prompt,
                        "output_token_count": completion,
                        "total_token_count": (prompt or 0) + (completion or 0)
                        if prompt is not None or completion is not None
                        else None,
                    },
                )
            if payload is not None:
                errors: list[str] = []
                req_text = json.dumps(request, separators=(",", ":"))
                resp_text = json.dumps(response, separators=(",", ":")) if response else None
                if len(req_text.encode()) > MAX_LOGGED_PAYLOAD_BYTES:
                    req_text, errors = None, [*errors, "MAX_REQUEST_SIZE_EXCEEDED"]
                if resp_text and len(resp_text.encode()) > MAX_LOGGED_PAYLOAD_BYTES:
                    resp_text, errors = None, [*errors, "MAX_RESPONSE_SIZE_EXCEEDED"]
                self._append(
                    payload,
                    {
                        "request_date": when.date().isoformat(),
                        "databricks_request_id": request_id,
                        "client_request_id": client_request_id,
                        "request_time": when.isoformat(timespec="milliseconds"),
                        "status_code": status_code,
                        "sampling_fraction": 1.0,
                        "execution_duration_ms": duration_ms,
                        "request": req_text,
                        "response": resp_text,
                        "served_entity_id": served_entity,
                        "logging_error_codes": errors,
                        "requester": requester,
                    },
                )
        except OSError:
            log.exception("endpoint %s: writing the AI Gateway tables failed", endpoint)
