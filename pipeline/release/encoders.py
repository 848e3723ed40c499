"""Small deterministic encoders: the same data always gives the same JSON, JPEG and PNG bytes."""

from __future__ import annotations

import io
import json
from typing import Any

JPEG_QUALITY = 95


def json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, separators=(",", ": ")) + "\n").encode()


def jpeg_bytes(image: Any) -> bytes:
    """PIL image → JPEG bytes: fixed quality and chroma subsampling (4:2:0), no EXIF/ICC/comment, baseline."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0", optimize=False, progressive=False)
    return buf.getvalue()


def png_bytes(fig: Any) -> bytes:
    """matplotlib figure → PNG bytes (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # No software tag, no creation time: the PNG bytes depend on the data (and the matplotlib version) only.
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()
