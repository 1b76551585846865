"""Makes ``plugins/engines/assets/astronaut-matte.png``, the bundled portrait's alpha (the anchor cut out of the
studio backdrop) for the browser overlay: OpenCV's GrabCut from a hand-placed prior (the face and suit certainly
the anchor, the frame's border certainly not), the largest region kept with its holes filled, its edge feathered by 1.5 px.

Run once; the result is committed. ``python scripts/make_astronaut_matte.py [--preview out.png]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

ASSETS = Path(__file__).resolve().parent.parent / "plugins" / "engines" / "assets"


def matte(image: np.ndarray) -> np.ndarray:
    mask = np.full(image.shape[:2], cv2.GC_PR_BGD, np.uint8)
    cv2.ellipse(mask, (225, 95), (80, 95), 0, 0, 360, cv2.GC_PR_FGD, -1)  # hair and head
    cv2.ellipse(mask, (222, 120), (45, 60), 0, 0, 360, cv2.GC_FGD, -1)  # the face
    cv2.rectangle(mask, (60, 200), (350, 512), cv2.GC_PR_FGD, -1)  # the suit
    cv2.rectangle(mask, (120, 230), (320, 512), cv2.GC_FGD, -1)
    cv2.rectangle(mask, (280, 350), (500, 512), cv2.GC_PR_FGD, -1)  # the helmet
    mask[:, :8] = mask[:8, :] = mask[:, -3:] = cv2.GC_BGD
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(image, mask, None, background, foreground, 10, cv2.GC_INIT_WITH_MASK)
    anchor = np.where((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(anchor)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])) if count > 1 else 0
    anchor = np.where(labels == largest, 255, 0).astype(np.uint8)
    outside = anchor == 0
    count, labels, stats, _ = cv2.connectedComponentsWithStats(outside.astype(np.uint8))
    for label in range(1, count):  # a hole (background not reaching the frame's edge) is part of the anchor
        x, y, w, h = stats[label, :4]
        if x > 0 and y > 0 and x + w < anchor.shape[1] and y + h < anchor.shape[0]:
            anchor[labels == label] = 255
    return cv2.GaussianBlur(anchor, (0, 0), 1.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preview", type=Path, help="also write the cut-out over green here")
    args = parser.parse_args()
    image = cv2.imread(str(ASSETS / "astronaut.png"))
    alpha = matte(image)
    cv2.imwrite(str(ASSETS / "astronaut-matte.png"), alpha, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if args.preview:
        a = alpha[..., None].astype(np.float32) / 255
        green = np.array([60, 200, 60], np.float32)
        cv2.imwrite(str(args.preview), (image * a + green * (1 - a)).astype(np.uint8))


if __name__ == "__main__":
    main()
