"""Uploaded-file resources (``/api/datasets``, ``/api/recordings``): posting a file, the files stored, a client
with a small upload limit, the refusal loop (each bad file a 4xx with its reason and nothing stored) and the
migration that adds a resource's table."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

BadCase = tuple[str, bytes, str, int, str]
"""(label, file bytes, file name, expected status, text the detail contains); the label "duplicate name" is
uploaded under the name "good"."""


def npz(**arrays: Any) -> bytes:
    """The bytes of an ``.npz`` holding ``arrays``."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def post_file(client: TestClient, auth: dict[str, str], url: str, data: bytes, filename: str,
              name: str | None = None) -> Any:
    """POST ``data`` as the multipart field ``file`` (and ``name`` when given) to ``url``."""
    return client.post(url, files={"file": (filename, data)}, data={"name": name} if name else None, headers=auth)


def stored_names(folder: Path) -> list[str]:
    """The names of the files in ``folder`` (none when it does not exist), sorted."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@contextmanager
def client_with_upload_limit(settings: Any, max_upload_bytes: int) -> Iterator[tuple[TestClient, Any]]:
    """A client of an app whose settings are ``settings`` with ``max_upload_bytes``, and those settings."""
    import dataclasses

    from service.app import create_app

    limited = settings.with_(limits=dataclasses.replace(settings.limits, max_upload_bytes=max_upload_bytes))
    application = create_app(limited, dispatcher=False)
    with TestClient(application, raise_server_exceptions=False) as c:
        yield c, limited
    application.state.engine.dispose()


def assert_refused_and_nothing_stored(client: TestClient, auth: dict[str, str], url: str, cases: list[BadCase],
                                      folder: Path) -> None:
    """Each case answers its status with its reason in the detail, and leaves the list at ``url`` and the files in
    ``folder`` as they were."""
    before, files = client.get(url).json(), stored_names(folder)
    assert len(cases) >= 10
    for label, data, filename, code, reason in cases:
        r = post_file(client, auth, url, data, filename, name="good" if label == "duplicate name" else None)
        assert r.status_code == code, (label, r.status_code, r.text)
        assert reason in str(r.json()["detail"]), (label, r.text)
        assert client.get(url).json() == before, label
        assert stored_names(folder) == files, label


def check_migration_adds_table(db_url: str, request: pytest.FixtureRequest, previous: str, revision: str,
                               table: str) -> None:
    """On a fresh database (SQLite file or PostgreSQL schema): ``table`` is absent at ``previous``, present after
    upgrading to ``revision``, absent again after downgrading to ``previous``, and the upgrade goes on to head."""
    from sqlalchemy import inspect

    from service.db.migrate import downgrade, head_revision, upgrade
    from service.db.session import make_engine

    url = db_url if db_url.startswith("sqlite") else request.getfixturevalue("pg_schema_factory")()
    eng = make_engine(url)
    try:
        assert upgrade(eng, previous) == previous
        assert table not in inspect(eng).get_table_names()
        assert upgrade(eng, revision) == revision
        assert table in inspect(eng).get_table_names()
        downgrade(eng, previous)
        assert table not in inspect(eng).get_table_names()
        assert upgrade(eng) == head_revision()
    finally:
        eng.dispose()


def check_insert_race(client: TestClient, auth: dict[str, str], url: str, repo: Any, monkeypatch: pytest.MonkeyPatch,
                      first: bytes, second: bytes, folder: Path, noun: str) -> None:
    """Uploads that the checks before the insert let through, as a concurrent upload would (``repo.by_sha256`` and
    ``repo.by_name`` patched to find nothing): the unique constraints answer a 409 "uploaded at the same time",
    the file of new content is removed, the file of the content already stored is kept, the list is unchanged."""
    assert post_file(client, auth, url, first, "a.npz", name="taken").status_code == 201
    before, files = client.get(url).json(), stored_names(folder)
    monkeypatch.setattr(repo, "by_sha256", lambda session, digest: None)
    monkeypatch.setattr(repo, "by_name", lambda session, name: None)
    for data, name in ((first, "other"), (second, "taken")):   # the same content; new content under a taken name
        r = post_file(client, auth, url, data, "b.npz", name=name)
        assert r.status_code == 409, r.text
        assert f"a {noun} with this name or content was uploaded at the same time" in r.json()["detail"], r.text
        assert client.get(url).json() == before and stored_names(folder) == files, name
