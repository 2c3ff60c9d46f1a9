"""Schemathesis: requests generated from the OpenAPI schema never get a 5xx (in-process ASGI, dispatcher off).

Every operation gets valid (positive) and invalid (negative) generated requests, with the bearer token so the write
endpoints are exercised beyond the 401. Runs on SQLite and PostgreSQL (PostgreSQL rejects out-of-range integers
that SQLite accepts). The dispatcher is off: nothing reaches Ray.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.conftest import TEST_TOKEN

EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 10}


def _fuzz_operation(operation: Any, mode: GenerationMode) -> str | None:
    """None when no generated request of ``operation`` gets a 5xx, else the failure."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(headers={"Authorization": f"Bearer {TEST_TOKEN}"})
        case.validate_response(response, checks=[not_a_server_error])

    try:
        run()
    except Unsatisfiable:  # an operation without parameters has no invalid requests
        return None
    except Exception as exc:  # noqa: BLE001 - collected and reported together
        return f"{operation.label} ({mode.value}): {str(exc)[:2000]}"
    return None


def test_no_server_errors(app: Any) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    failures = [f for op in operations for mode in EXAMPLES if (f := _fuzz_operation(op, mode)) is not None]
    assert not failures, "\n\n".join(failures)
