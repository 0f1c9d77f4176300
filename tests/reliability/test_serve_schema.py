"""Schemathesis against the server's own OpenAPI schema, in process (ASGI transport).

Every operation of ``create_app`` gets generated requests (valid and invalid query/path values and
bodies) and each response is checked: no 5xx (``not_a_server_error``), status code declared in the
schema (``status_code_conformance``), content type declared (``content_type_conformance``) and body
valid against the declared model (``response_schema_conformance``). ``CASES`` counts the requests
generated per operation.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

CASES: Counter[str] = Counter()


@pytest.fixture(scope="module")
def serve_schema_app(tiny_checkpoint: Path, shapes_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """The app over a store of 8 ``shapes`` test images indexed with the tiny checkpoint."""
    from coembed.search.indexer import IndexerConfig, index_folder
    from coembed.search.searcher import open_searcher
    from coembed.serve.app import ServeConfig, create_app

    root = tmp_path_factory.mktemp("schema")
    (root / "images").mkdir()
    for src in sorted((shapes_data / "test" / "images").glob("*.png"))[:8]:
        shutil.copy(src, root / "images" / src.name)
    index_folder(root / "index.db", root / "images", tiny_checkpoint, IndexerConfig(progress=False))
    return create_app(open_searcher(root / "index.db"), ServeConfig(max_upload_bytes=100_000, max_top=20))


@pytest.fixture(scope="module")
def serve_schema(serve_schema_app):
    return schemathesis.openapi.from_asgi("/openapi.json", serve_schema_app)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_every_operation_conforms_to_its_schema(serve_schema) -> None:
    """Each operation in turn (schemathesis' pytest plugin does not run under pytest 9, so the
    hypothesis loop is driven here), 40 generated cases per operation, all failures reported."""
    failures = []
    operations = [result.ok() for result in serve_schema.get_all_operations()]
    assert len(operations) >= 6
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case) -> None:
            CASES[operation.label] += 1
            case.call_and_validate(checks=CHECKS)

        try:
            run()
        except Exception as e:  # noqa: BLE001 - collect every operation's failure, then fail once
            failures.append(f"{operation.label}: {e}")
    assert not failures, "\n\n".join(failures)


def test_zz_report_cases() -> None:
    print("\nschemathesis cases per operation:", dict(CASES), "total", sum(CASES.values()))
