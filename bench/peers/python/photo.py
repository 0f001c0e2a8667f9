"""Pillow's peer of actorbot's photo step in bench/compare.sh: what a seed
bot did with a photo before putting it on an album page: open,
ImageOps.exif_transpose, thumbnail to fit A4 at 150 dpi (1240 x 1754; for a
JPEG, thumbnail decodes at a reduced DCT scale first), RGB, save as JPEG at
quality 85 (actorbot's). How many photos one core does per second, on the
12-megapixel JPEG of actorbot's documents benchmark (bench/peers/inputs
writes the same bytes).

  python photo.py INPUT.jpg [--seconds S] [--out OUT.jpg]

Prints one line: photos/s, output size.
"""

import argparse
import io
import time

from PIL import Image, ImageOps


def process(data: bytes) -> tuple[bytes, tuple[int, int]]:
    image = Image.open(io.BytesIO(data))
    image = ImageOps.exif_transpose(image)
    image.thumbnail((1240, 1754))
    if image.mode != "RGB":
        image = image.convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue(), image.size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out")
    args = parser.parse_args()
    with open(args.input, "rb") as f:
        data = f.read()
    jpeg, size = process(data)
    if args.out:
        with open(args.out, "wb") as f:
            f.write(jpeg)
    runs = 0
    started = time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        process(data)
        runs += 1
    rate = runs / (time.perf_counter() - started)
    print(f"Pillow: {rate:.2f} photos/s on one core ({len(data)} bytes -> {size[0]} x {size[1]}, {len(jpeg)} bytes)")


if __name__ == "__main__":
    main()
