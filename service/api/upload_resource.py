"""The plumbing every uploaded-file resource shares (``/api/datasets``, ``/api/recordings``; docs/http-api.md).

A route module keeps its own handlers (their signatures, documentation and responses make its OpenAPI operations)
and calls one :class:`UploadResource` for the rest: a store or delete refused with ``service.uploads.UploadRejected``
rolls the session back and answers its 4xx with the reason (nothing is stored); a stored upload answers with its
``Location``; a list page carries ``X-Total-Count``; a delete removes the file only once the row's deletion is
committed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from fastapi import HTTPException, Response, status
from pydantic import BaseModel
from sqlalchemy.orm import Session

from service.api.deps import get_or_404
from service.uploads import UploadRejected


class _StoredRow(Protocol):
    id: int


RowT = TypeVar("RowT", bound=_StoredRow)
OutT = TypeVar("OutT", bound=BaseModel)


@contextmanager
def refusal_as_http(session: Session) -> Iterator[None]:
    """Commit what the block did; an ``UploadRejected`` in it rolls the session back and becomes an HTTPException
    with its status and reason."""
    try:
        yield
    except UploadRejected as exc:
        session.rollback()
        raise HTTPException(exc.status, detail=exc.detail) from exc
    session.commit()


@dataclass(frozen=True)
class UploadResource(Generic[RowT, OutT]):
    """One resource of uploaded files: its URL ``prefix``, its ORM ``row`` type, its ``out`` schema and the ``noun``
    a 404 names ("data set", "recording")."""

    prefix: str
    row: type[RowT]
    out: type[OutT]
    noun: str

    def get(self, session: Session, item_id: int) -> RowT:
        """The row ``item_id``; a 404 naming the noun when there is none."""
        return get_or_404(session, self.row, item_id, self.noun)

    def show(self, session: Session, item_id: int) -> OutT:
        """The ``out`` schema of the row ``item_id`` (404 when there is none)."""
        return self.out.model_validate(self.get(session, item_id))

    def create(self, session: Session, response: Response, store: Callable[[], RowT]) -> OutT:
        """Run ``store`` (read and validate the upload, add its row) and commit; ``Location`` names the new row.
        A refusal rolls back and answers its 4xx."""
        with refusal_as_http(session):
            row = store()
        response.headers["Location"] = f"{self.prefix}/{row.id}"
        return self.out.model_validate(row)

    def page(self, response: Response, rows_and_total: tuple[Sequence[Any], int]) -> list[OutT]:
        """One list page as ``out`` schemas; ``X-Total-Count`` gives the number of rows in all pages."""
        rows, total = rows_and_total
        response.headers["X-Total-Count"] = str(total)
        return [self.out.model_validate(r) for r in rows]

    def delete(self, session: Session, item_id: int, remove: Callable[[RowT], Path]) -> Response:
        """Delete the row ``item_id`` with ``remove`` (which checks the owner and that no run uses it, and returns
        the stored file), commit, then unlink the file: 204. A refusal rolls back and answers its 4xx."""
        row = self.get(session, item_id)
        with refusal_as_http(session):
            stored = remove(row)
        stored.unlink(missing_ok=True)
        return Response(status_code=status.HTTP_204_NO_CONTENT)
