"""The data sets page: uploaded data sets with their class histograms, and one data set with a few samples drawn
as images when D is an image size (a square, or an upload of N × H × W)."""

from __future__ import annotations

import base64
import io

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from discovery.data.uploads import scale_unit, upload_path
from service.api.deps import IdPath, SessionDep, SettingsDep
from service.api.schemas import DatasetOut
from service.db.models import DatasetRow
from service.db.repositories import datasets as repo
from service.web.pages import _not_found, _page

router = APIRouter(include_in_schema=False)

#: samples shown per class, and classes shown
SAMPLES_PER_CLASS, SAMPLE_CLASSES = 3, 12


def histogram_svg(classes: list[int], counts: list[int], width: int = 420, height: int = 120) -> Markup:
    """Bars of the samples per class (inline SVG, no script)."""
    top = max(counts) if counts else 1
    n = max(len(counts), 1)
    bar = width / n
    parts = [(f'<svg class="histogram" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 16}" '
              f'role="img" aria-label="samples per class">')]
    for i, (c, k) in enumerate(zip(classes, counts)):
        h = max(1.0, (height - 4) * k / top)
        parts.append(f'<rect x="{i * bar + 1:.1f}" y="{height - h:.1f}" width="{max(bar - 2, 1):.1f}" '
                     f'height="{h:.1f}" fill="#4a78b5"><title>class {c}: {k}</title></rect>')
        if n <= 30:
            parts.append(f'<text x="{i * bar + bar / 2:.1f}" y="{height + 12}" font-size="10" '
                         f'text-anchor="middle">{c}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _png(image: np.ndarray) -> str:
    from matplotlib import image as mpimg

    buf = io.BytesIO()
    mpimg.imsave(buf, image, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def samples(row: DatasetRow, folder: object) -> list[tuple[int, list[str]]]:
    """A few samples of the first classes as PNG data URIs, when D = side²; empty otherwise."""
    side = row.side
    if not side or side * side != row.dim:
        return []
    try:
        with np.load(upload_path(row.sha256, folder), allow_pickle=False) as archive:  # type: ignore[arg-type]
            x, y = archive["X"], archive["y"]
    except (OSError, KeyError, ValueError):
        return []
    x = scale_unit(x)
    out = []
    for c in row.classes[:SAMPLE_CLASSES]:
        idx = np.flatnonzero(y == c)[:SAMPLES_PER_CLASS]
        out.append((c, [_png(x[i].reshape(side, side)) for i in idx]))
    return out


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request, session: SessionDep) -> HTMLResponse:
    rows, total = repo.list_datasets(session, limit=200)
    items = [(DatasetOut.model_validate(r), histogram_svg(r.classes, r.class_counts, 240, 50)) for r in rows]
    return _page(request, "datasets.html", datasets=items, total=total, title="Data sets")


@router.get("/datasets/{dataset_id}", response_class=HTMLResponse)
def dataset_page(request: Request, dataset_id: IdPath, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    row = session.get(DatasetRow, dataset_id)
    if row is None:
        return _not_found(request, f"Data set {dataset_id}")
    jobs = repo.jobs_using(session, row, active_only=False)
    return _page(request, "dataset.html", ds=DatasetOut.model_validate(row),
                 histogram=histogram_svg(row.classes, row.class_counts), samples=samples(row, settings.datasets_dir),
                 jobs=jobs[-50:], title=f"Data set {row.name}")
