"""Schemathesis over the OpenAPI schema, against `python -m app` over real HTTP: generated valid and
invalid requests for every operation, each answer checked for 5xx, and against the documented
statuses, content types, headers and bodies.

Excluded checks, and why:
- positive_data_acceptance: the schema can say "a binary file", not "a PNG of a digit": generated
  uploads are rightly refused (415 or 400).
- use_after_free, ensure_resource_availability, ignored_auth, object_level_authorization: stateful
  checks that need links between operations or several users; the API has neither.
"""

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS

from app.config import Settings
from app.main import create_app
from tests.reliability.scale import scaled
from tests.server import ServerProcess

EXCLUDED = {
    "positive_data_acceptance",
    "use_after_free",
    "ensure_resource_availability",
    "ignored_auth",
    "object_level_authorization",
}
CHECKED = [check for check in CHECKS.get_all() if check.__name__ not in EXCLUDED]


# The schema the app serves at /openapi.json, built from the app itself so pytest can list the
# operations before any server runs; the requests go to the real server.
schema = schemathesis.openapi.from_dict(create_app(Settings(role="api")).openapi())


@schema.parametrize()
@settings(max_examples=scaled(25, 300), deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_its_contract(case: schemathesis.Case, server: ServerProcess) -> None:
    case.call_and_validate(base_url=server.url, checks=CHECKED)
