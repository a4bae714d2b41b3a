"""Pictures for metadata and reports: contact sheets and line/scatter plots as PNG bytes.

No Dagster here. `md_image` turns PNG bytes into a markdown image with a data URI, which the
Dagster UI renders inline in asset metadata and which keeps report.html self-contained.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageDraw


def contact_sheet(pixels: np.ndarray, captions: list[str] | None = None, cols: int = 8, thumb: int = 96) -> bytes:
    """A grid of thumbnails (N, S, S, 3) uint8 → PNG bytes, with optional captions."""
    n = len(pixels)
    assert n > 0, "contact sheet needs at least one image"
    rows = (n + cols - 1) // cols
    pad = 14 if captions else 0
    sheet = Image.new("RGB", (cols * thumb, rows * (thumb + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, px in enumerate(pixels):
        r, c = divmod(i, cols)
        img = Image.fromarray(np.asarray(px, dtype=np.uint8)).resize((thumb, thumb), Image.Resampling.BILINEAR)
        sheet.paste(img, (c * thumb, r * (thumb + pad)))
        if captions:
            draw.text((c * thumb + 2, r * (thumb + pad) + thumb), str(captions[i])[:16], fill=(0, 0, 0))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def line_plot(series: dict[str, list[float]], title: str, xlabel: str = "step", ylabel: str = "") -> bytes:
    """One or more named curves → PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for name, ys in series.items():
        ax.plot(range(1, len(ys) + 1), ys, label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if len(series) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def md_image(png: bytes, alt: str = "plot") -> str:
    """Markdown for an inline PNG (data URI)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def md_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A list of dicts → a markdown table."""
    if not rows:
        return "_(none)_"
    columns = columns or list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
