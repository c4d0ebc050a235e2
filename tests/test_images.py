"""Every image is decoded as a viewer shows it, through every path (issue: the model sees what a
person sees). Each case builds its file, flattens the same picture to 8-bit RGB by hand, and
checks that the decoder gives exactly that (hence the same prediction, checked on the demo model
through the service's upload path too)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from explorer.app.images import ImageError, read_image

H, W = 24, 32


def _scene() -> np.ndarray:
    """An opaque RGB picture: a red disc on a blue-green gradient."""
    yy, xx = np.mgrid[:H, :W]
    img = np.stack([xx * 8, yy * 10, 255 - xx * 4], -1).astype(np.uint8)
    img[(yy - 12) ** 2 + (xx - 16) ** 2 < 49] = (230, 20, 20)
    return img


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255
    return np.round(rgb * a + 255 * (1 - a)).astype(np.uint8)


def _close(got: np.ndarray, want: np.ndarray, atol: int = 1) -> bool:
    return got.shape == want.shape and int(np.abs(got.astype(int) - want.astype(int)).max()) <= atol


def case_rgba_hidden_colour(tmp: Path) -> tuple[Path, np.ndarray]:
    # Transparent background whose hidden RGB is bright green: a viewer shows white there.
    rgb, alpha = _scene(), np.zeros((H, W), np.uint8)
    yy, xx = np.mgrid[:H, :W]
    disc = (yy - 12) ** 2 + (xx - 16) ** 2 < 49
    alpha[disc] = 255
    alpha[:, :4] = 128                                   # a half-transparent strip as well
    rgb[~disc] = (0, 255, 0)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp / "rgba.png")
    return tmp / "rgba.png", _over_white(rgb, alpha)


def case_la(tmp: Path) -> tuple[Path, np.ndarray]:
    g = _scene()[..., 1]
    alpha = np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1))
    Image.fromarray(np.dstack([g, alpha]), "LA").save(tmp / "la.png")
    return tmp / "la.png", _over_white(np.repeat(g[..., None], 3, 2), alpha)


def case_palette_transparency(tmp: Path) -> tuple[Path, np.ndarray]:
    idx = (np.arange(H * W).reshape(H, W) % 4).astype(np.uint8)
    palette = [0, 255, 0, 200, 30, 30, 10, 10, 200, 250, 250, 10] + [0] * (256 * 3 - 12)
    im = Image.fromarray(idx, "P")
    im.putpalette(palette)
    im.info["transparency"] = 0                          # index 0 (green) is transparent
    im.save(tmp / "p.png", transparency=0)
    colours = np.array(palette[:12], np.uint8).reshape(4, 3)
    want = colours[idx]
    want[idx == 0] = 255
    return tmp / "p.png", want


def case_gray16(tmp: Path) -> tuple[Path, np.ndarray]:
    v = (np.arange(H * W).reshape(H, W) * 85 % 65536).astype(np.uint16)
    Image.fromarray(v).save(tmp / "g16.png")             # Pillow opens it as I;16
    g = np.round(v.astype(np.float64) * 255 / 65535).astype(np.uint8)
    return tmp / "g16.png", np.repeat(g[..., None], 3, 2)


def case_bilevel(tmp: Path) -> tuple[Path, np.ndarray]:
    b = _scene()[..., 0] > 128
    Image.fromarray(b).convert("1").save(tmp / "b.png")
    return tmp / "b.png", np.repeat(np.where(b, 255, 0).astype(np.uint8)[..., None], 3, 2)


def case_exif_rotated(tmp: Path) -> tuple[Path, np.ndarray]:
    # Stored landscape with orientation 6 (rotate 90 degrees clockwise to display).
    im = Image.fromarray(_scene())
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp / "r.png", exif=exif)
    return tmp / "r.png", np.rot90(_scene(), k=-1)


def case_float_tiff(tmp: Path) -> tuple[Path, np.ndarray]:
    f = (_scene()[..., 2] / 255).astype(np.float32)
    Image.fromarray(f, "F").save(tmp / "f.tiff")
    g = np.round(f.astype(np.float64) * 255).astype(np.uint8)
    return tmp / "f.tiff", np.repeat(g[..., None], 3, 2)


def case_cmyk_jpeg(tmp: Path) -> tuple[Path, np.ndarray]:
    Image.fromarray(_scene()).convert("CMYK").save(tmp / "c.jpg", quality=100)
    with Image.open(tmp / "c.jpg") as raw:               # by hand: the standard CMYK->RGB
        want = np.asarray(raw.convert("RGB"))
    return tmp / "c.jpg", want


def case_gif_first_frame(tmp: Path) -> tuple[Path, np.ndarray]:
    frames = [Image.fromarray(_scene()), Image.fromarray(255 - _scene())]
    frames[0].save(tmp / "a.gif", save_all=True, append_images=frames[1:])
    with Image.open(tmp / "a.gif") as raw:
        want = np.asarray(raw.convert("RGB"))             # frame 0, quantised as stored
    return tmp / "a.gif", want


CASES = [case_rgba_hidden_colour, case_la, case_palette_transparency, case_gray16, case_bilevel,
         case_exif_rotated, case_float_tiff, case_cmyk_jpeg, case_gif_first_frame]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_decoded_as_a_viewer_shows_it_through_every_source(case, tmp_path: Path) -> None:
    path, want = case(tmp_path)
    got = read_image(path)
    assert got.dtype == np.uint8 and got.ndim == 3 and got.shape[2] == 3
    assert _close(got, want), f"max diff {np.abs(got.astype(int) - want.astype(int)).max()}"
    # The same bytes through the other entry points: bytes (API), PIL image (Python), str path.
    assert np.array_equal(read_image(path.read_bytes()), got)
    assert np.array_equal(read_image(str(path)), got)
    with Image.open(path) as im:
        assert np.array_equal(read_image(im), got)


def test_hidden_colour_never_reaches_the_prediction(tmp_path: Path) -> None:
    """The RGBA case through the service's upload path on the demo zoo: same probabilities as
    the picture flattened by hand (and different from the one with the hidden colour kept)."""
    from explorer.app.service import Service
    from explorer.config import AttackSpec, MergeSpec

    path, want = case_rgba_hidden_colour(tmp_path)
    svc = Service(device="cpu", store_path="none")
    names = ["circle", "square", "triangle", "star", "cross"]
    models = {"natural": (["natural"], MergeSpec(lambdas=(1.0,)))}
    none = AttackSpec("none", eps=0)

    def probs(image: np.ndarray) -> dict[str, float]:
        return svc.inspect(svc.default_base, models, image, names, none)["probs"]["natural"][0]

    got = probs(svc.decode_image(str(path)))
    assert got == probs(want)
    with Image.open(path) as im:
        hidden = np.asarray(im.convert("RGB"))            # what the old decoder passed on
    assert not _close(hidden, want) and probs(hidden) != got


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height 1-bit pixels (what a bomb's header says)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [12000, 20000])
def test_pixel_bombs_are_refused_before_decoding_with_one_line(side: int) -> None:
    with pytest.raises(ImageError, match="pixels.*limit") as err:
        read_image(_png_header_only(side, side))
    assert "\n" not in str(err.value)


def test_pixel_cap_is_a_setting_and_real_bombs_stay_cheap(tmp_path: Path) -> None:
    # A real (fully encoded) 4000x4000 1-bit PNG: refused under a 1 MP cap without decoding,
    # accepted under the default cap.
    im = Image.new("1", (4000, 4000))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    data = buf.getvalue()
    assert len(data) < 50_000
    with pytest.raises(ImageError, match="16,000,000 pixels; the limit is 1,000,000"):
        read_image(data, max_pixels=1_000_000)
    assert read_image(data).shape == (4000, 4000, 3)


@pytest.mark.parametrize("payload", [b"", b"not an image", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", b"GIF89a" + b"\0" * 5])
def test_unreadable_images_are_one_readable_line(payload: bytes, tmp_path: Path) -> None:
    expected = "Upload an image" if payload == b"" else "Could not read the image: is it a PNG, JPEG"
    with pytest.raises(ImageError, match="^" + expected) as err:
        read_image(payload)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path) not in msg and "Traceback" not in msg
    if payload:   # what is wrong in a user's words, no exception class name
        assert msg == "Could not read the image: is it a PNG, JPEG, WebP, GIF, BMP or TIFF file, whole and uncorrupted?"


def test_arrays_are_accepted_in_every_documented_form() -> None:
    rgb = _scene()
    assert np.array_equal(read_image(rgb), rgb)
    assert np.array_equal(read_image(rgb.astype(np.float32) / 255), rgb)
    assert np.array_equal(read_image(rgb.astype(np.uint16) * 257), rgb)
    assert np.array_equal(read_image(rgb[..., 0]), np.repeat(rgb[..., :1], 3, 2))
    alpha = np.full((H, W), 0, np.uint8)
    assert (read_image(np.dstack([rgb, alpha])) == 255).all()
    with pytest.raises(ImageError, match="HxW, HxWx3 or HxWx4"):
        read_image(np.zeros((2, 2, 2), np.uint8))
