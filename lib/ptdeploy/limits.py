"""Databricks Model Serving limits: the one home of every limit ptdeploy checks.

The client side (``endpoints``, ``query``, ``throughput``) checks them before calling a
workspace; the local workspace enforces them as Databricks does, so an offline rehearsal
fails where a real workspace would. Each limit says where it comes from: a Databricks
documentation page, or "local choice" where Databricks documents none (then it is listed
in the README's local-workspace section with its reason).
"""

from __future__ import annotations

import re

# Resource and payload limits table:
PAYLOAD_LIMITS_URL = (
    "https://docs.databricks.com/gcp/en/machine-learning/model-serving/model-serving-limits"
)
# Foundation model request fields (n, max_tokens, input):
FOUNDATION_MODEL_API_URL = (
    "https://learn.microsoft.com/azure/databricks/machine-learning/foundation-models/api-reference"
)
MIB = 1024 * 1024

# "Payload size, per request: 16 MB. For endpoints serving foundation models, external
# models, or AI agents the limit is 4 MB." (PAYLOAD_LIMITS_URL). Every local endpoint
# serves an llm/v1 foundation model (provisioned throughput), so invocations get 4 MB.
MAX_PAYLOAD_BYTES = 16 * MIB
MAX_FOUNDATION_MODEL_PAYLOAD_BYTES = 4 * MIB
# The REST API (create, update config, tags...) documents no limit: local choice, the
# general payload limit (a real request is a few kB).
MAX_MANAGEMENT_PAYLOAD_BYTES = MAX_PAYLOAD_BYTES

# Endpoint and served entity names: "alphanumeric characters, dashes, and underscores"
# (ServedEntityInput.name / CreateServingEndpoint.name in the serving API reference).
# Length 63 and a letter or digit first: local choice (a DNS label, as endpoint URLs are).
ENDPOINT_NAME_MAX_LENGTH = 63
ENDPOINT_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
SERVED_ENTITY_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,63}")

# Served entities per endpoint: local choice (Databricks documents none; traffic splits
# between a handful of versions, and each local entity is a worker process).
MAX_SERVED_ENTITIES = 10

# "Environment variables, per served model: 30" (PAYLOAD_LIMITS_URL, custom models).
MAX_ENVIRONMENT_VARS = 30

# Tags per endpoint and their sizes: local choice (Databricks documents none for serving
# endpoints; these are the bounds of Unity Catalog tags).
MAX_TAGS = 50
MAX_TAG_KEY_LENGTH = 255
MAX_TAG_VALUE_LENGTH = 1000

# Provisioned throughput: a multiple of the model's chunk size (get-model-optimization-
# info), min <= max, max > 0 (provisioned throughput docs). The most chunks one served
# entity may ask for: local choice (Databricks caps it per workspace through quotas).
MAX_THROUGHPUT_CHUNKS = 100

# n (choices per prompt): "an integer greater than zero" (FOUNDATION_MODEL_API_URL);
# the upper bound is a local choice (a CPU worker is not a GPU fleet), shared by the
# query helpers and the local engine.
MAX_N = 16
# top_logprobs of a chat request: 0 to 20 (FOUNDATION_MODEL_API_URL, as OpenAI).
MAX_TOP_LOGPROBS = 20
# Inputs of one embeddings request: local choice (Databricks documents only the payload
# size); 4 MB of short sentences is tens of thousands of inputs, too many for one request
# to a CPU worker.
MAX_EMBEDDING_INPUTS = 2048
# Prompts of one completions request: the same bound as embeddings inputs.
MAX_PROMPTS = MAX_EMBEDDING_INPUTS
# max_tokens: "null means no limit, or an integer greater than zero"; in practice the
# model's context: prompt tokens + max_tokens must fit in it (the engine checks it).

# AI Gateway inference tables: "Payloads larger than 1 MiB are not logged"
# (https://docs.databricks.com/aws/en/ai-gateway/configure-ai-gateway-endpoints).
MAX_LOGGED_PAYLOAD_BYTES = 1 * MIB

# Scale to zero. Databricks scales an endpoint with scale_to_zero_enabled down when it
# receives no requests for a while, and the next request waits for capacity to come back
# (a cold start: "scale to zero ... the first request after idle incurs additional
# latency", https://docs.databricks.com/aws/en/machine-learning/model-serving/create-manage-serving-endpoints).
# The idle period is not a documented contract; the local workspace unloads an idle
# entity's worker after SCALE_TO_ZERO_IDLE_S seconds (local choice, environment variable
# SCALE_TO_ZERO_IDLE_ENV to change it) and loads it again on the next request, which waits
# at most COLD_START_TIMEOUT_S for it.
SCALE_TO_ZERO_IDLE_ENV = "PTDEPLOY_SCALE_TO_ZERO_IDLE_S"
SCALE_TO_ZERO_IDLE_S = 300.0
COLD_START_TIMEOUT_S = 600.0


def scale_to_zero_idle_seconds() -> float:
    """``$PTDEPLOY_SCALE_TO_ZERO_IDLE_S`` if set to a positive number, else the default."""
    import os

    try:
        value = float(os.environ.get(SCALE_TO_ZERO_IDLE_ENV, ""))
    except ValueError:
        return SCALE_TO_ZERO_IDLE_S
    return value if value > 0 else SCALE_TO_ZERO_IDLE_S
