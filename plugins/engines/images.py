"""Reading the avatar's image files (portraits, mattes, sprites) safely: the header is checked before any pixel is
decoded, so a 0x0 file, a decompression bomb or a truncated download is a clear :class:`InputError` naming the
file, not a crash, a hang or gigabytes of memory.

Pillow reads the header (size, format) without decoding; OpenCV decodes, as the engines always have.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from anchorcast.errors import InputError

MAX_PIXELS = 100_000_000
"""A portrait larger than 100 megapixels (10000x10000; a 200 MP phone photo is 16320x12240) is refused: decoded
it would take 300 MB and more, and the engines scale it to the stream's size anyway."""


def read_image(path: Path, what: str, flags: int = cv2.IMREAD_COLOR, hint: str = "use a PNG or JPEG portrait"
               ) -> npt.NDArray[np.uint8]:
    """The image as OpenCV decodes it with ``flags`` (BGR order), after :func:`check_image`; ``what`` names the
    file in messages ("the avatar image", "the sprite")."""
    check_image(path, what, hint)
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as error:
        raise InputError(f"cannot read {what} {path}: {error.strerror or error}") from error
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise InputError(f"cannot read {what} {path}: not an image OpenCV can decode", hint=hint)
    return image


def check_image(path: Path, what: str, hint: str = "use a PNG or JPEG portrait") -> None:
    """InputError unless ``path`` is an image file whose header is whole and whose size is 1 to
    :data:`MAX_PIXELS` pixels. Nothing is decoded: a bomb is refused by the size it declares."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # the size is checked here, before any decoding, with a clearer message
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width < 1 or height < 1:
                raise InputError(f"{what} {path} is {width}x{height} pixels: there is no picture in it", hint=hint)
            if width * height > MAX_PIXELS:
                raise InputError(
                    f"{what} {path} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels): at most "
                    f"{MAX_PIXELS // 1_000_000} megapixels",
                    hint="scale it down: the anchor is drawn at the stream's size anyway",
                )
            if image.format == "PNG":
                image.verify()  # every chunk's checksum, without decoding: finds a truncated file
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except UnidentifiedImageError:
        raise InputError(f"cannot read {what} {path}: not an image file (PNG, JPEG, ...)", hint=hint) from None
    except (OSError, SyntaxError, ValueError) as error:  # verify() reports a broken PNG as SyntaxError
        raise InputError(f"cannot read {what} {path}: the file is damaged or truncated ({error})",
                         hint="save or download it again") from None
