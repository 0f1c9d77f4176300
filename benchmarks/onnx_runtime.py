"""ONNX export: ONNX Runtime fp32 and int8 vs coembed (PyTorch), speed and agreement.

1. Speed, ViT-B/32 shape (random OpenCLIP weights loaded into coembed, as in ``inference.py``):
   ``coembed.interop.onnx.export`` with ``int8=True``; the image batch and the real captions of
   ``inference.py`` through coembed, ONNX Runtime fp32 and ONNX Runtime int8, timed alternately;
   max abs difference of the (normalised) embeddings to coembed's.
2. Agreement, a trained checkpoint on a ``shapes`` split (``--checkpoint``, ``--data``): the split's
   images and captions embedded by all three; text-to-image R@1 of each, and the mean overlap of
   each caption's top-10 images between int8 and fp32.

    .venv-test/bin/python benchmarks/onnx_runtime.py --checkpoint runs/demo --data data/shapes --json onnx.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import open_clip
import torch
from torch import nn

import coembed
from coembed.data.datasets import read_samples
from coembed.data.splits import split_root
from coembed.eval.features import embed_split
from coembed.interop.onnx import OnnxEncoder, export
from inference import build_models, caption_batch, compare


class RuntimeModel(nn.Module):
    """What ``embed_split`` needs of a model, answered by ONNX Runtime."""

    def __init__(self, encoder: OnnxEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self._device = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.cfg = SimpleNamespace(embed_dim=encoder.config.embed_dim)
        self.text_cfg = SimpleNamespace(context_length=encoder.config.context_length, pad_id=encoder.config.pad_id)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return torch.from_numpy(self.encoder.encode_image(images.float()))

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return torch.from_numpy(self.encoder.encode_text(tokens))


def speed(args: argparse.Namespace, folder: Path) -> list[dict]:
    _, ours, _ = build_models(args.model, folder)
    export(ours.model, ours.preprocess, folder / "onnx", int8=True, source=args.model)
    runtimes = {"onnxruntime fp32": OnnxEncoder(folder / "onnx", threads=args.threads),
                "onnxruntime int8": OnnxEncoder(folder / "onnx", int8=True, threads=args.threads)}
    size = ours.preprocess.image_size
    images = torch.randn(args.image_batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    tokens = open_clip.get_tokenizer(args.model)(caption_batch(args.text_batch))
    rows = []
    for task, inputs in (("image", images), ("text", tokens)):
        torch_fn = getattr(ours.model, f"encode_{task}")
        fns = {"coembed": lambda: torch_fn(inputs, normalize=True)}
        fns.update({k: (lambda e=e: torch.from_numpy(getattr(e, f"encode_{task}")(inputs))) for k, e in runtimes.items()})
        rows += compare(task, len(inputs), fns, args.rounds, "coembed")
    return rows


def agreement(args: argparse.Namespace, folder: Path) -> dict:
    loaded = coembed.load(args.checkpoint)
    export(loaded.model, loaded.preprocess, folder / "trained", int8=True, source=str(args.checkpoint))
    root = split_root(args.data, args.split)
    samples, _ = read_samples(root)
    models = {"coembed": loaded.model.eval(),
              "onnxruntime fp32": RuntimeModel(OnnxEncoder(folder / "trained", threads=args.threads)),
              "onnxruntime int8": RuntimeModel(OnnxEncoder(folder / "trained", int8=True, threads=args.threads))}
    feats = {}
    with torch.no_grad():
        for name, model in models.items():
            feats[name] = embed_split(model, loaded.tokenizer, root, samples, loaded.preprocess, batch_size=128)
    out = {"images": len(samples), "captions": int(feats["coembed"].text_emb.shape[0]), "t2i_r1": {}, "max_abs_diff_vs_coembed": {}}
    tops = {}
    for name, f in feats.items():
        sims = f.text_emb @ f.image_emb.T  # (captions, images)
        tops[name] = sims.topk(10, dim=1).indices
        out["t2i_r1"][name] = float((sims.argmax(1) == f.text_to_image).float().mean())
        out["max_abs_diff_vs_coembed"][name] = {"image": float((f.image_emb - feats["coembed"].image_emb).abs().max()),
                                                "text": float((f.text_emb - feats["coembed"].text_emb).abs().max())}
    def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, b)) / (10 * len(a)))
    out["top10_overlap_int8_vs_fp32"] = overlap(tops["onnxruntime int8"], tops["onnxruntime fp32"])
    out["top10_overlap_fp32_vs_coembed"] = overlap(tops["onnxruntime fp32"], tops["coembed"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image-batch", type=int, default=16)
    parser.add_argument("--text-batch", type=int, default=64)
    parser.add_argument("--checkpoint", type=Path, help="trained dual encoder for the agreement part")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {"model": args.model, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        result["speed"] = speed(args, Path(tmp))
        print(f"\n{args.model}, {args.threads} threads\n| task | implementation | items | median s | items/s | vs coembed | max abs diff |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for r in result["speed"]:
            base = next(x for x in result["speed"] if x["task"] == r["task"] and x["impl"] == "coembed")
            print(f"| {r['task']} | {r['impl']} | {r['items']} | {r['median_s']:.3f} | {r['items_per_s']:.1f} | "
                  f"{r['items_per_s'] / base['items_per_s']:.2f}x | {r['max_abs_diff_vs_coembed']:.1e} |")
        if args.checkpoint:
            result["agreement"] = agree = agreement(args, Path(tmp))
            print(f"\n{args.checkpoint} on {args.data}/{args.split}: {agree['images']} images, {agree['captions']} captions")
            for name, r1 in agree["t2i_r1"].items():
                d = agree["max_abs_diff_vs_coembed"][name]
                print(f"  {name}: t2i R@1 {r1:.3f}; max abs diff to coembed image {d['image']:.1e}, text {d['text']:.1e}")
            print(f"  top-10 overlap int8 vs fp32: {agree['top10_overlap_int8_vs_fp32']:.3f}; "
                  f"fp32 vs coembed: {agree['top10_overlap_fp32_vs_coembed']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
