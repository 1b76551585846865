"""Per-frame side data (``TaggedImage``): what an engine attaches to a picture reaches the outputs with it."""

from __future__ import annotations

import numpy as np

from anchorcast.media import TaggedImage, VideoFrame, tag_image


def test_side_data_travels_with_the_picture_through_views_and_copies() -> None:
    coefficients = np.linspace(0, 1, 53, dtype=np.float32)
    image = tag_image(np.zeros((8, 8, 3), np.uint8), coefficients=coefficients)
    assert isinstance(image, TaggedImage)
    for kept in (image, image[2:6], image.copy()):
        frame = VideoFrame(kept, 7, 25)
        assert np.array_equal(frame.side_data["coefficients"], coefficients)
    # A plain array made from it carries nothing: data never sticks to a picture it did not describe.
    assert VideoFrame(np.array(image), 7, 25).side_data == {}
    assert VideoFrame(np.zeros((8, 8, 3), np.uint8), 7, 25).side_data == {}


def test_tag_image_does_not_copy_the_pixels() -> None:
    pixels = np.zeros((4, 4, 3), np.uint8)
    tagged = tag_image(pixels, coefficients=np.zeros(53, np.float32))
    pixels[0, 0] = 255
    assert tagged[0, 0, 0] == 255
