"""``coembed explain``: a PNG heat map of where a text matches an image."""

from __future__ import annotations

import argparse
from pathlib import Path

from coembed.cli.common import add_checkpoint_args, positive_int, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="heat map of where a text matches an image",
                       description="Grad-CAM on the cross-attention for fusion models (ALBEF's grounding), "
                                   "occlusion saliency for dual encoders.")
    add_checkpoint_args(p)
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("text", metavar="TEXT", help="the text to locate, e.g. \"the large red circle\"")
    p.add_argument("--out", help="PNG to write (default: IMAGE's name with .explain.png, in the current folder)")
    p.add_argument("--method", choices=("gradcam", "occlusion"), help="force a method (default: by model)")
    p.add_argument("--window", type=positive_int, help="occlusion window in pixels (default: a quarter of the image side)")
    p.add_argument("--stride", type=positive_int, help="occlusion stride in pixels (default: half the window)")
    p.add_argument("--layer", type=int, help="Grad-CAM fusion layer index (default: the middle one, as ALBEF)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from coembed.cli.common import load_checkpoint
    from coembed.errors import ConfigError
    from coembed.eval.explain import ExplainConfig, GradCamConfig, OcclusionConfig, explain_image
    from coembed.transforms import load_image
    from coembed.viz import plot_explanation

    if not args.text.strip():
        raise ConfigError("TEXT is empty; give the words to locate, e.g. \"the large red circle\"")
    image = load_image(args.image)
    cfg = ExplainConfig(method=args.method, occlusion=OcclusionConfig(window=args.window, stride=args.stride),
                        gradcam=GradCamConfig(layer=args.layer))
    loaded = load_checkpoint(args)
    try:
        result, pixels = explain_image(loaded.model, loaded.preprocess, loaded.tokenizer, image, args.text, cfg)
    except ValueError as e:  # a method the model cannot do, a window larger than the image, a bad layer
        raise ConfigError(str(e)) from None
    out = Path(args.out) if args.out else Path(Path(args.image).stem + ".explain.png")
    subtitle = f"{result.method}, score {result.score:.3f}"
    plot_explanation(pixels, result.heatmap.numpy(), args.text, out, peak=result.peak, subtitle=subtitle)
    _report(args, result, out, pixels.shape[:2])
    return 0


def _report(args: argparse.Namespace, result, out: Path, size: tuple[int, int]) -> None:
    x, y = result.peak
    info = {"image": args.image, "text": args.text, "method": result.method, "score": round(result.score, 4),
            "peak": {"x": round(x, 2), "y": round(y, 2), "x_frac": round(x / size[1], 4), "y_frac": round(y / size[0], 4)},
            "out": str(out)}
    if args.json:
        print_json(info)
        return
    print(f"wrote {out}")
    print(f"peak at x={x:.1f}, y={y:.1f} px of {size[1]}x{size[0]} ({info['peak']['x_frac']:.0%} across, "
          f"{info['peak']['y_frac']:.0%} down); {result.method} score {result.score:.3f}")
