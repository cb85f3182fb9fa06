"""The OpenAPI document matches what is served: schemathesis generates valid and invalid requests from it for
every operation and checks every answer (status codes, content types, response schemas, authentication
required, invalid input refused, no server errors)."""
from __future__ import annotations

import re

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from gateway.outputs.web.api import OPERATIONS
from tests.web_support import web_gateway

# one test per operation and mode, known without a server: the same declarations build the document
CASES = [(op.endpoint, mode) for op in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
CASES.append(("openapi", GenerationMode.POSITIVE))  # it takes no input that could be invalid
CASES += [("batteries_csv", mode) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]  # not JSON


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """A gateway whose PUT /config checks and saves what schemathesis generates, but applies none of it: a
    generated document would move the faces (this one too), lock clients out or point MQTT and SNMP traps at
    made-up hosts.  What a reload applies is tests/test_reload.py's; here, the API against its document."""
    from gateway.app import ReloadReport

    with web_gateway(tmp_path_factory.mktemp("web-openapi"), strings=1, cells=4) as w:
        async def check_only(new):
            old = w.gateway.config.data
            return ReloadReport(changed=sorted(k for k in set(old) | set(new.data) if old.get(k) != new.data.get(k)))

        w.gateway.reload = check_only
        yield w


@pytest.fixture(scope="module")
def api_schema(web):
    return schemathesis.openapi.from_url(web.url + "api/v1/openapi.json")


@pytest.fixture(scope="module")
def auth(web):
    return {"Authorization": f"Bearer {web.token('admin')}"}


@pytest.mark.parametrize(("operation_id", "mode"), CASES, ids=[f"{o}-{m.value}" for o, m in CASES])
def test_api_matches_its_openapi_document(api_schema, auth, operation_id, mode):
    op = api_schema.find_operation_by_id(operation_id)
    # A configuration can be schema-valid and still wrong across sections (a device on a bus that is not
    # declared, a profile that is not installed): JSON Schema cannot say that, so PUT /config answers such
    # documents with 400 naming the key, as documented, and "valid data is accepted" does not hold there.
    excluded = [positive_data_acceptance] if operation_id == "put_config" else []

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=8, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def check(case):
        case.call_and_validate(headers=auth, excluded_checks=excluded)

    check()


def test_document_lists_every_served_operation(web, auth):
    doc = requests.get(web.url + "api/v1/openapi.json", timeout=30).json()
    documented = {(m.upper(), "/api/v1" + path) for path, item in doc["paths"].items() for m in item}
    served = {(m, str(rule)) for rule in web.service.app.url_map.iter_rules() if rule.endpoint.startswith("api.")
              for m in rule.methods - {"HEAD", "OPTIONS"}}
    served = {(m, re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", path)) for m, path in served}
    assert served == documented
    assert doc["openapi"] == "3.1.0" and doc["paths"]["/openapi.json"]["get"]["security"] == []
