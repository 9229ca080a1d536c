"""Images for the pages: tensors as PNG data URIs, amplified perturbations, and checked
uploads.
Plain Python (no streamlit), so pages stay thin."""
from __future__ import annotations

import base64
import io

import numpy as np
import torch

from core.catalog import MIN_SIDE
from core.paths import InputError


MAX_UPLOAD_BYTES = 5 * 1024 * 1024


def pair_display(clean: torch.Tensor, attacked: torch.Tensor, scale: int = 3) -> str:
    """A clean image above its attacked version, 4 pixels apart, as one PNG data URI (pairs
    then wrap as a row of images on any screen width)."""
    gap = torch.ones(clean.shape[0], 4, clean.shape[2], dtype=clean.dtype)
    if not clean.is_floating_point():
        gap = gap * 255
    return to_display(torch.cat([clean, gap, attacked.to(clean.dtype)], 1), scale)


def to_display(img: torch.Tensor, scale: int = 4) -> str:
    """A (C, H, W) uint8 or [0, 1] float tensor as a PNG data URI, upscaled without smoothing.

    Inline rather than a Streamlit media file: a quick run of reruns (a slider dragged) deletes
    media files the browser is still fetching, which shows as broken images."""
    from PIL import Image

    if img.is_floating_point():
        img = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    arr = img.permute(1, 2, 0).numpy()
    arr = arr.repeat(scale, 0).repeat(scale, 1)
    buf = io.BytesIO()
    Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def amplified_perturbation(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """The perturbation scaled to fill [0, 1] around mid-grey, so tiny changes are visible."""
    delta = x_adv - x
    return delta / (2 * delta.abs().max().clamp_min(1e-8)) + 0.5


def read_upload(raw: bytes, input_shape: list[int]) -> torch.Tensor:
    """An uploaded image as a (1, C, H, W) float tensor in [0, 1], resized to the model input."""
    from PIL import Image, UnidentifiedImageError

    if len(raw) > MAX_UPLOAD_BYTES:
        raise InputError(f"upload is {len(raw) / 1e6:.1f} MB; the limit is "
                         f"{MAX_UPLOAD_BYTES / 1e6:.0f} MB")
    try:
        img = Image.open(io.BytesIO(raw))
        img.load()
    except (UnidentifiedImageError, OSError) as err:
        raise InputError("the uploaded file is not an image RobustLab can read (PNG, JPEG, "
                         "BMP, GIF or WebP)") from err
    if min(img.size) < MIN_SIDE:  # resizing would invent the picture, not show it
        raise InputError(f"the uploaded image is {img.size[0]}x{img.size[1]} pixels; RobustLab "
                         f"needs at least {MIN_SIDE}x{MIN_SIDE}")
    c, h, w = input_shape
    img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    t = torch.from_numpy(np.asarray(img).copy()).float() / 255
    return (t.unsqueeze(0) if c == 1 else t.permute(2, 0, 1)).unsqueeze(0)
