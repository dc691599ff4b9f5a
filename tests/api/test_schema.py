"""Property-based run of the OpenAPI schema (schemathesis) against a real `rtml serve`.

Every operation gets generated requests, valid and invalid, with and without the documented
parameters: no answer is a 5xx, and every answer matches the schema (a documented status,
its content type and its body schema).
"""

from __future__ import annotations

import inspect
import uuid

import pytest
import redis
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance,
)

from rtml_core.registry import ModelRegistry
from rtml_core.stores.offline import open_offline_store
from rtml_core.stores.online import open_online_store
from tests.api.conftest import API_KEY, feature_row, register_xgboost
from tests.api.servers import rtml_serve
from tests.conftest import REDIS_URL, _unavailable

pytestmark = pytest.mark.redis

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def served_schema(tmp_path_factory, real_data):
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except Exception as error:  # noqa: BLE001
        _unavailable("Redis", error)
    home = tmp_path_factory.mktemp("schema")
    prefix = f"rtmltest:{uuid.uuid4().hex[:10]}"
    offline_url = f"sqlite:///{home / 'offline.sqlite'}"
    registry = ModelRegistry(open_offline_store(offline_url), home / "artifacts", owns_store=True)
    forced = {"force": True} if "force" in inspect.signature(registry.promote).parameters else {}  # the gate (issue 12)
    registry.promote(register_xgboost(registry, real_data), "schema test", **forced)
    registry.close()
    store = open_online_store(REDIS_URL, prefix)
    store.write_rows([feature_row(real_data, -1, age_s=1),
                      feature_row(real_data, -1, symbol="ETH-USD", rsi_14=float("nan"))])
    store.close()
    env = {"RTML_HOME": str(home), "RTML_OFFLINE_URL": offline_url, "RTML_ONLINE_URL": REDIS_URL,
           "RTML_ONLINE_PREFIX": prefix, "RTML_ARTIFACTS_DIR": str(home / "artifacts"), "RTML_API_KEYS": API_KEY,
           "RTML_API_RATE_LIMIT": "0", "RTML_API_LOG_PREDICTIONS": "false", "RTML_API_MAX_FEATURE_AGE_MS": "600000"}
    try:
        with rtml_serve(env) as (base, _, _):
            yield base, schemathesis.openapi.from_url(f"{base}/schema/openapi.json")
    finally:
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()


def _operations():
    from api.app import create_app
    from tests.api.conftest import api_settings

    from litestar.serialization import decode_json, encode_json

    # the schema the server publishes at /schema/openapi.json (examples serialized as JSON)
    spec = decode_json(encode_json(create_app(api_settings()).openapi_schema.to_schema()))
    loaded = schemathesis.openapi.from_dict(spec)
    return [result.ok() for result in loaded.get_all_operations()]


OPERATIONS = _operations()


def _takes_input(operation) -> bool:
    """Only an operation with parameters or a body can be sent something that breaks its schema."""
    return bool(len(operation.path_parameters) or len(operation.query) or operation.body)


def test_the_published_schema_is_the_one_tested(served_schema):
    base, published = served_schema
    assert sorted(op.label for op in OPERATIONS) == sorted(
        result.ok().label for result in published.get_all_operations())


@pytest.mark.parametrize(("operation", "mode"), [
    pytest.param(op, mode, id=f"{op.label} {mode.value}") for op in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or _takes_input(op)])
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_operation_answers_within_its_schema_and_never_5xx(served_schema, operation, mode, data):
    """Requests that follow the schema (positive) and that break it (negative)."""
    base, _ = served_schema
    case = data.draw(operation.as_strategy(generation_mode=mode))
    case.call_and_validate(base_url=base, headers={"X-API-Key": API_KEY}, checks=CHECKS)
