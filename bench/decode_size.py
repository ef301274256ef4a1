"""How small may a photo be decoded before the model sees a difference?

For 12 MP and 48 MP JPEGs and 12 MP PNGs (bench/photos.py), decoded in full and at a short
edge of ``margin`` x the model's input size (JPEG draft mode, integer reduce for the others),
this compares what BLIP's image processor hands the model (pixel_values, in 8-bit units):
PSNR and the largest difference against a full decode + the processor's own resize; and the
captions of a tiny random-weight BLIP with BLIP-base's 384 px input on both (``--base``: of
a random-weight model with BLIP-base's architecture). For scale, the
same against the full photo saved again as JPEG at quality 85 (a change no one would call a
different picture). Also times decode + prepare on each path.

    PYTHONPATH=src HF_HUB_OFFLINE=1 python bench/decode_size.py [--photos 16]
"""

from __future__ import annotations

import argparse
import atexit
import io
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import photos  # noqa: E402

MARGINS = (1.0, 1.5, 2.0, 3.0)


def pixel_values(captioner: Any, decoded: Any) -> Any:
    """What the model receives: prepare (resize, processor) on the decoded image."""
    from captioner.adapters.captioners.transformers.processed_ahead import PreparedImage

    prepared = captioner.prepare(decoded).pixels
    assert isinstance(prepared, PreparedImage)
    return prepared.processed["pixel_values"]


def reference(captioner: Any, decoded: Any) -> Any:
    """A full decode through the image processor alone (its own resize)."""
    ahead = captioner.processed_ahead
    return ahead.processor(images=[decoded.pixels], return_tensors="pt")["pixel_values"]


def in_8bit(values: Any, processor: Any) -> Any:
    import torch

    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    return (values * std + mean) * 255


def compare(a: Any, b: Any) -> tuple[float, float]:
    """PSNR (dB) and max abs difference, in 8-bit units."""
    diff = (a - b).double()
    mse = float((diff**2).mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
    return psnr, float(diff.abs().max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--photos", type=int, default=16, help="12 MP JPEGs (default 16)")
    parser.add_argument("--large", type=int, default=4, help="48 MP JPEGs (default 4)")
    parser.add_argument("--pngs", type=int, default=6, help="12 MP PNGs (default 6)")
    parser.add_argument(
        "--base", action="store_true", help="captions by a BLIP-base-sized model instead"
    )
    args = parser.parse_args(argv)

    from tests.support.models import build_blip

    from captioner.adapters.captioners.transformers import GenerationSettings, TransformersCaptioner
    from captioner.adapters.imaging.decoder import PillowImageDecoder

    work = Path(tempfile.mkdtemp(prefix="captioner-decode-size-"))
    atexit.register(shutil.rmtree, work, True)  # a BLIP-base-sized model is about 1 GB
    if args.base:
        model_dir = build_blip(work / "blip-base", size="base")
    else:
        model_dir = build_blip(work / "blip-384", image_size=384)
    captioner = TransformersCaptioner(
        str(model_dir), generation=GenerationSettings(max_new_tokens=8), device="cpu"
    )
    assert captioner.wait_until_ready(120).ready
    processor = captioner.processed_ahead.processor  # type: ignore[union-attr]
    edge = max(processor.size["height"], processor.size["width"])

    cases: list[tuple[str, bytes]] = []
    for seed in range(args.photos):
        cases.append(("12 MP JPEG", photos.jpeg(photos.picture(4032, 3024, 100 + seed))))
    for seed in range(args.large):
        cases.append(("48 MP JPEG", photos.jpeg(photos.picture(8064, 6048, 200 + seed))))
    for seed in range(args.pngs):
        picture = photos.picture(4032, 3024, 300 + seed)
        out = io.BytesIO()
        picture.save(out, "PNG", compress_level=1)
        cases.append(("12 MP PNG", out.getvalue()))

    full_decoder = PillowImageDecoder()
    rows: dict[tuple[str, str], dict[str, list[float]]] = {}

    def note(kind: str, variant: str, **values: float) -> None:
        bucket = rows.setdefault((kind, variant), {})
        for name, value in values.items():
            bucket.setdefault(name, []).append(value)

    def timed_decode(decoder: Any, data: bytes) -> tuple[Any, float]:
        began = time.perf_counter()
        decoded = decoder.decode(io.BytesIO(data))
        return decoded, time.perf_counter() - began

    for kind, data in cases:
        full, full_s = timed_decode(full_decoder, data)
        began = time.perf_counter()
        truth = in_8bit(reference(captioner, full), processor)
        reference_s = time.perf_counter() - began
        truth_caption = captioner.describe(full, "").text
        note(kind, "full", decode_s=full_s, prepare_s=reference_s, psnr=math.inf, max_abs=0.0)
        note(kind, "full", same_caption=1.0)
        # The production path on every pixel: prepare's resize, then the processor.
        began = time.perf_counter()
        through_prepare = in_8bit(pixel_values(captioner, full), processor)
        prepare_s = time.perf_counter() - began
        psnr, worst = compare(through_prepare, truth)
        note(kind, "full, prepared", decode_s=full_s, prepare_s=prepare_s, psnr=psnr, max_abs=worst)
        note(
            kind,
            "full, prepared",
            same_caption=float(captioner.describe(full, "").text == truth_caption),
        )
        for margin in MARGINS:
            decoder = PillowImageDecoder(min_edge=round(margin * edge))
            reduced, reduced_s = timed_decode(decoder, data)
            began = time.perf_counter()
            values = in_8bit(pixel_values(captioner, reduced), processor)
            prepare_s = time.perf_counter() - began
            psnr, worst = compare(values, truth)
            variant = f"margin {margin:g} ({reduced.pixels.width}x{reduced.pixels.height})"
            note(kind, variant, decode_s=reduced_s, prepare_s=prepare_s, psnr=psnr, max_abs=worst)
            same = captioner.describe(reduced, "").text == truth_caption
            note(kind, variant, same_caption=float(same))
        # For scale: the full picture saved again as JPEG q85, decoded in full.
        out = io.BytesIO()
        full.pixels.save(out, "JPEG", quality=85)
        resaved = full_decoder.decode(io.BytesIO(out.getvalue()))
        psnr, worst = compare(in_8bit(reference(captioner, resaved), processor), truth)
        same = captioner.describe(resaved, "").text == truth_caption
        note(kind, "re-saved JPEG q85", psnr=psnr, max_abs=worst, same_caption=float(same))

    print(f"model input {edge} px; BLIP image processor {type(processor).__name__}")
    print(
        f"{'photo':<11} {'decoded as':<28} {'decode ms':>9} {'prepare ms':>10} "
        f"{'PSNR dB':>8} {'max abs':>7} {'same caption':>12}"
    )
    for (kind, variant), values in rows.items():
        decode = statistics.median(values["decode_s"]) * 1000 if "decode_s" in values else None
        prep = statistics.median(values["prepare_s"]) * 1000 if "prepare_s" in values else None
        finite = [v for v in values["psnr"] if math.isfinite(v)]
        psnr_text = f"{min(finite):.1f}" if finite else "inf"
        matches = values["same_caption"]
        agreed = f"{int(sum(matches))}/{len(matches)}"
        worst = max(values["max_abs"])
        print(
            f"{kind:<11} {variant:<28} {_ms(decode):>9} {_ms(prep):>10} {psnr_text:>8} "
            f"{worst:>7.1f} {agreed:>12}"
        )
    print("PSNR: the worst photo's; max abs: the largest over all photos (8-bit units).")
    captioner.close()
    return 0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    raise SystemExit(main())
