"""Schemathesis over the OpenAPI schema: requests generated from every operation's declared shape
(valid and not), sent with a valid bearer token, never get a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings as hsettings

from conftest import PASSWORD, make_settings
from leukodx.service.db import make_engine, session_factory
from leukodx.service.security import add_user, issue_token

EXAMPLES = 25


@pytest.fixture
def served(tmp_path_factory, request):
    from leukodx.service.app import create_app

    settings = make_settings(request, tmp_path_factory.mktemp("schema"), "sqlite")
    engine = make_engine(settings.database_url)
    with session_factory(engine)() as s:
        user = add_user(s, "ada", PASSWORD, "admin")
        token = issue_token(s, user)
    engine.dispose()
    return create_app(settings), {"Authorization": f"Bearer {token}"}


def test_no_server_errors(served):
    app, auth = served
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    seen, errors = set(), []
    for operation in operations:
        @given(case=operation.as_strategy())
        @hsettings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                   suppress_health_check=list(HealthCheck))
        def run(case):
            response = case.call(headers=auth)
            seen.add(operation.label)
            if response.status_code >= 500:
                errors.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}")

        run()
    assert len(seen) == len(operations) and not errors, errors
