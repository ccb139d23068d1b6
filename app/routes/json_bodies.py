"""JSON request bodies that routes read themselves (to bound them before they are parsed): the one
way a body's size, media type, syntax and fields are checked, with the same answers everywhere."""

from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from python_multipart.multipart import parse_options_header

from app.deps import services_of
from app.errors import BadRequest, InvalidRequest, UnsupportedMediaType

M = TypeVar("M", bound=BaseModel)


def is_json(content_type: str | None) -> bool:
    media_type, _ = parse_options_header(content_type or "application/json")
    return media_type == b"application/json" or media_type.endswith(b"+json")


def parsed_json(body: bytes, content_type: str | None, model: type[M]) -> M:
    """`model` from a body already read: 415 unless it is JSON, 400 if it does not parse, 422 naming
    each field that is wrong (never its value)."""
    if not is_json(content_type):
        media_type, _ = parse_options_header(content_type or "")
        raise UnsupportedMediaType(f"send application/json, not {media_type.decode('latin-1')}")
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        if any(item["type"] == "json_invalid" for item in error.errors()):
            raise BadRequest("the body is not valid JSON") from None
        raise InvalidRequest([{**item, "loc": ("body", *item["loc"])} for item in error.errors()]) from None


async def json_body(request: Request, model: type[M], limit: int, empty: M | None = None) -> M:
    """`model` from a JSON body of at most `limit` bytes (413 past it); an empty body is `empty`
    where the route allows one."""
    body = await services_of(request).bodies.read(request, limit)
    if empty is not None and not body.strip():
        return empty
    return parsed_json(body, request.headers.get("content-type"), model)
