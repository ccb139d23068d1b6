"""GET /: the draw-a-digit page (static HTML, CSS and JavaScript; no build step)."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(tags=["page"])


@router.get("/", include_in_schema=False)
async def read_page() -> FileResponse:
    """The page to draw a digit on and see the prediction."""
    return FileResponse(STATIC / "index.html", media_type="text/html")
