"""Image IO: every image entering the product is decoded the way an image viewer shows it.

One decoder, :func:`read_image`, serves every path (web upload, examples, the API, Python), so
the model sees what a person sees:

- **Size first.** Width and height are read from the header and checked against a pixel cap
  (``max_pixels``, default :data:`DEFAULT_MAX_PIXELS`) *before* any pixel is decoded, so a
  decompression bomb (a 12000x12000 1-bit PNG is 17.6 KB) costs nothing. Pillow's own
  ``DecompressionBombError`` is answered with the same readable line.
- **Orientation.** The EXIF orientation tag is applied (a phone photo stands upright).
- **Colour.** An embedded ICC profile is converted to sRGB (when Pillow has LittleCMS);
  CMYK / YCbCr / LAB / HSV are converted to RGB by Pillow.
- **Transparency** (RGBA, LA, PA, P or L with a ``transparency`` entry, premultiplied modes) is
  composited over **white**, as a viewer on a white page shows it: colour hidden under
  transparent pixels never reaches the model.
- **Bit depth.** 16-bit and 32-bit integer greyscale (``I;16*``, ``I``) are scaled to 8 bits
  (``v * 255 / 65535`` for 16-bit data; ``I`` images holding values above 65535 are scaled by
  their own maximum); float images (``F``) holding values in [0, 1] are scaled by 255,
  otherwise clipped to [0, 255]. 1-bit images become 0/255.
- **Animation.** The first frame.

Returns HxWx3 ``uint8`` RGB. Every failure is an :class:`ImageError` (a ``ValueError``) whose
message is one line that names neither server paths nor library internals.
"""
from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000   # 40 MP: a large phone photo; decoding it peaks near 0.5 GB
ImageSource = Union[str, Path, bytes, "Image.Image", np.ndarray]


class ImageError(ValueError):
    """An image that cannot be used (unreadable, too many pixels); the message is one line."""


def read_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``source`` as a viewer shows it (module docstring): HxWx3 uint8 RGB.

    Args:
        source: a file path, encoded bytes, a PIL image, or an array (HxW, HxWx3 or HxWx4;
            uint8, uint16 or float in [0, 1]).
        max_pixels: refuse images with more than this many pixels, before decoding.

    Raises:
        ImageError: no image, an unreadable file, or more than ``max_pixels`` pixels.
    """
    if source is None or (isinstance(source, (str, bytes)) and not source):
        raise ImageError("Upload an image (or click one of the examples) first.")
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels)
    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels)
        return flatten(source)
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                _check_size(im.size, max_pixels)    # header only: nothing decoded yet
                return flatten(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"The image has too many pixels (limit {max_pixels:,}).") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise ImageError("Could not read the image: is it a PNG, JPEG, WebP, GIF, BMP or TIFF file, "
                         "whole and uncorrupted?") from None


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise ImageError("The image is empty (0 pixels).")
    if w * h > max_pixels:
        raise ImageError(f"The image is {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,}.")


def flatten(im: Image.Image) -> np.ndarray:
    """A decoded PIL image as a viewer shows it: HxWx3 uint8 RGB (module docstring)."""
    im = ImageOps.exif_transpose(im) or im
    im = _to_srgb(im)
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return np.repeat(_scale_depth(im)[..., None], 3, axis=2)
    if mode == "1":
        im = im.convert("L")
    if _has_alpha(im):
        rgba = im.convert("RGBA")          # P/L with transparency, LA, PA, RGBa, La too
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _scale_depth(im: Image.Image) -> np.ndarray:
    """Single-channel high-bit-depth image -> HxW uint8."""
    a = np.asarray(im)
    if im.mode == "F":
        a = a.astype(np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        scaled = a * 255.0 if a.size and a.min() >= 0 and a.max() <= 1 else a
        return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    a = a.astype(np.int64)
    top = 65535 if im.mode.startswith("I;16") or a.max(initial=0) <= 65535 else int(a.max())
    return np.clip(np.round(np.clip(a, 0, None) * 255.0 / top), 0, 255).astype(np.uint8)


def _to_srgb(im: Image.Image) -> Image.Image:
    """Apply an embedded ICC profile (to sRGB) when Pillow can; otherwise the image unchanged."""
    icc = im.info.get("icc_profile")
    if not icc or im.mode not in ("RGB", "RGBA", "CMYK", "L", "LA"):
        return im
    try:
        from PIL import ImageCms
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        alpha = im.getchannel("A") if im.mode in ("RGBA", "LA") else None
        base = im.convert("RGB") if im.mode in ("RGBA", "LA", "L") else im
        out = ImageCms.profileToProfile(base, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        if out is None:
            return im
        if alpha is not None:
            out.putalpha(alpha)
        return out
    except Exception as exc:  # a broken or unsupported profile: show the pixels as stored
        log.info("ignoring an unusable ICC profile (%s)", type(exc).__name__)
        return im


def _from_array(a: np.ndarray, max_pixels: int) -> np.ndarray:
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ImageError(f"An image array must be HxW, HxWx3 or HxWx4; got shape {a.shape}.")
    _check_size((a.shape[1], a.shape[0]), max_pixels)
    if a.dtype == np.uint16:
        a = np.round(a.astype(np.float64) * 255 / 65535).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        a = np.clip(np.round(np.nan_to_num(a) * 255), 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ImageError(f"An image array must be uint8, uint16 or float in [0, 1]; got {a.dtype}.")
    if a.ndim == 2 or a.shape[2] == 1:
        a = np.repeat(a.reshape(a.shape[0], a.shape[1], 1), 3, axis=2)
    if a.shape[2] == 4:
        return flatten(Image.fromarray(np.ascontiguousarray(a), "RGBA"))
    return np.ascontiguousarray(a)


def encode_png(image: np.ndarray, out: str | Path) -> Path:
    """Write an HxWx3 uint8 image as PNG at its own resolution; the path."""
    Image.fromarray(image).save(out, format="PNG")
    return Path(out)


def image_to_tensor(image: np.ndarray, max_side: int = 224) -> torch.Tensor:
    """HxWx3 uint8 -> ``[1, 3, H', W']`` float in [0, 1], longest side at most ``max_side``.

    Larger images are area-downsampled (aspect kept) before the attack: the attack runs on
    the pixels the model sees, and the adversarial image returned is this size.
    """
    x = torch.from_numpy(np.array(image[..., :3], dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255
    side = max(x.shape[-2:])
    if side > max_side:
        size = [max(1, round(s * max_side / side)) for s in x.shape[-2:]]
        x = torch.nn.functional.interpolate(x, size=size, mode="area")
    return x.clamp_(0, 1)


def tensor_to_image(x: torch.Tensor) -> np.ndarray:
    """``[1, 3, H, W]`` in [0, 1] -> HxWx3 uint8."""
    return x[0].permute(1, 2, 0).clamp(0, 1).mul(255).round().byte().cpu().numpy()


# ------------------------------------------------------------------ input forms
# A zoo trained on one kind of picture declares, in its manifest's [defaults] ``input``, how an
# upload is brought to that kind before the model sees it. "as-is" keeps the image.

FASHION_SIDE = 28


def fashion_mnist_form(image: np.ndarray) -> np.ndarray:
    """An RGB photo as a Fashion-MNIST image: HxWx3 uint8 -> 28x28x3 uint8 (grey in all three).

    Follows the dataset's own conversion (Xiao et al. 2017, README "Fashion-MNIST"): grey levels,
    the product as a light silhouette on black, trimmed to its extent, longest side resized to
    28 px, centred on a 28x28 canvas. Here: grey = ITU-R 601 luma; the background level is the
    median of the border pixels, and a light one (> 127) means a product photo on white, so the
    grey levels are negated; the background level is then mapped to 0 (``(g - bg) * 255 /
    (255 - bg)``); the trim box holds the pixels above 10% of the brightest. A 28x28 image with a
    black border (a Fashion-MNIST image itself) is returned unchanged.
    """
    rgb = np.asarray(image[..., :3], dtype=np.float32)
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    bg = float(np.median(border))
    if grey.shape == (FASHION_SIDE, FASHION_SIDE) and bg < 8:
        g8 = grey.round().clip(0, 255).astype(np.uint8)
        return np.repeat(g8[..., None], 3, axis=2)
    if bg > 127:
        grey, bg = 255 - grey, 255 - bg
    grey = ((grey - bg) * (255 / max(255 - bg, 1.0))).clip(0, 255)
    mask = grey > 0.1 * max(float(grey.max()), 1.0)
    if mask.any():
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        grey = grey[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = grey.shape
    scale = FASHION_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(grey.round().astype(np.uint8)).resize(size, Image.Resampling.LANCZOS))
    canvas = np.zeros((FASHION_SIDE, FASHION_SIDE), np.uint8)
    top, left = (FASHION_SIDE - small.shape[0]) // 2, (FASHION_SIDE - small.shape[1]) // 2
    canvas[top:top + small.shape[0], left:left + small.shape[1]] = small
    return np.repeat(canvas[..., None], 3, axis=2)


INPUT_FORMS = {"as-is": lambda image: image, "fashion-mnist": fashion_mnist_form}


def check_input_form(form: str) -> str:
    """The form's name, or a ValueError naming the valid ones (one line)."""
    if form not in INPUT_FORMS:
        raise ValueError(f"manifest [defaults] input {form!r} is not an input form; valid: {sorted(INPUT_FORMS)}")
    return form


def to_input_form(image: np.ndarray, form: str = "as-is") -> np.ndarray:
    """``image`` (HxWx3 uint8) brought to a zoo's input form (``INPUT_FORMS``): HxWx3 uint8."""
    return INPUT_FORMS[check_input_form(form)](image)
