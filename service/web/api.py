"""What every router shares: the error body, the documented error answers, the store-id
path parameter, and the no-store header for answers that carry merchants' data."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Response
from pydantic import BaseModel, Field

from service.neto.credentials import STORE_ID_MAX_LENGTH, STORE_ID_PATTERN


class ErrorBody(BaseModel):
    error: str = Field(examples=["store_not_found"])
    detail: str = Field(examples=["No install exists for this store."])
    request_id: str = Field(examples=["req_5f2a9c0e1b7d4a3f9e8c7b6a"])


# Free text a caller sends (filters, descriptions): no control characters. PostgreSQL
# cannot store NUL at all, and no operator means one in a filter or a label.
PLAIN_TEXT = r"^[^\x00-\x1f\x7f]*$"

StoreId = Annotated[
    str, Path(min_length=1, max_length=STORE_ID_MAX_LENGTH, pattern=STORE_ID_PATTERN)
]

# Typed as FastAPI's `responses` parameter, so the dicts can be merged and passed on.
Responses = dict[int | str, dict[str, Any]]


def error(description: str) -> dict[str, Any]:
    """A documented error answer: the envelope, with what the status means here."""
    return {"model": ErrorBody, "description": description}


ERRORS: Responses = {
    401: error("Missing or invalid caller token"),
    403: error("The token lacks the scope"),
}
NOT_FOUND: Responses = {404: error("No install for this store")}


async def no_store(response: Response) -> None:
    """Operator answers carry merchants' names and addresses: no cache may keep them."""
    response.headers["Cache-Control"] = "no-store"
