"""Judging generated ``shapes`` images without humans.

For a seeded subset of test captions (``prompts_per_layout`` per layout) an image generator draws one
image per caption; the images are scored by models trained separately on real data:

- **CLIP score**: ``100 * max(cos(image, prompt), 0)`` of a coembed dual encoder's normalised
  embeddings, averaged (torchmetrics' ``CLIPScore``; Hessel et al. 2021 scale by 2.5 instead of 100).
- **R@1 among distractors**: the prompt against ``distractors`` other test captions (each the
  canonical caption of another test scene; the test split holds no two scenes with one description,
  so every distractor is false of the prompt's scene), ranked by the dual encoder's cosine and, given
  a fusion model, by its ITM matched probability. A tie with a distractor counts as a miss.
- **Attribute correctness**: the :mod:`coembed.eval.attribute_reader` reads shape, colour, size and
  position for the layout the prompt names. Headline: single-object prompts whose object has both
  the right shape and the right colour.

Every score is also computed for two reference rows on the same prompts: ``real`` (the real test image
each caption describes: the ceiling, which includes the reader's own errors) and two floors,
``shuffled`` (real images of *other* prompts of the same layout) and ``noise`` (uniform noise).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from coembed.errors import DataError
from coembed.eval.attribute_reader import LAYOUTS, AttributeReader, SceneTarget, attribute_correctness
from coembed.eval.pair_scores import has_itm, itm_scorer
from coembed.io import read_jsonl

GenerateFn = Callable[[list[str], int], Tensor]  # (prompts, seed) -> (N, 3, S, S) in [0, 1]
ROWS = ("generated", "real", "shuffled", "noise")


@dataclass(frozen=True)
class Prompt:
    """One test caption to draw, its target scene and the real image it describes."""

    text: str
    target: SceneTarget
    image: Path


def select_prompts(root: str | os.PathLike, *, per_layout: int, layouts: Sequence[str] = LAYOUTS, seed: int = 0) -> list[Prompt]:
    """A seeded subset of a ``shapes`` split: up to ``per_layout`` captions of each layout, in file order.

    The prompt is each scene's canonical caption (``captions[0]``); its target comes from the line's
    ``layout`` / ``objects`` / ``position``, never from parsing the text.
    """
    if per_layout < 1:
        raise ValueError(f"per_layout must be >= 1, got {per_layout}")
    bad = [lay for lay in layouts if lay not in LAYOUTS]
    if bad or not layouts:
        raise ValueError(f"layouts must be a non-empty subset of {LAYOUTS}, got {list(layouts)}")
    root = Path(root)
    by_layout: dict[str, list[Prompt]] = {lay: [] for lay in layouts}
    for _, line in read_jsonl(_manifest(root)):
        target = SceneTarget.from_line(line)
        if target.layout in by_layout:
            by_layout[target.layout].append(Prompt(line["captions"][0], target, root / line["image"]))
    rng = random.Random(seed)
    out = []
    for lay in layouts:
        found = by_layout[lay]
        keep = sorted(rng.sample(range(len(found)), min(per_layout, len(found))))
        out += [found[i] for i in keep]
    if not out:
        raise DataError(f"{root} has no captions of the layouts {list(layouts)}")
    return out


def _manifest(root: Path) -> Path:
    path = root / "captions.jsonl"
    if not path.is_file():
        raise DataError(f"{root} has no captions.jsonl: expected a split of `coembed data shapes`")
    return path


def canonical_captions(root: str | os.PathLike) -> list[str]:
    """The canonical caption of every scene of a split (the distractor pool)."""
    return [line["captions"][0] for _, line in read_jsonl(_manifest(Path(root)))]


def load_images(paths: Sequence[Path]) -> Tensor:
    """Real images as (N, 3, S, S) floats in [0, 1]."""
    arrays = []
    for path in paths:
        with Image.open(path) as img:
            arrays.append(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S)


# ----------------------------------------------------------------------------- reference rows
def shuffled_pairing(prompts: Sequence[Prompt]) -> list[int]:
    """For prompt i, the index of another prompt of the same layout (the next one, cyclically).

    Its real image is a mismatched image of the right layout: the floor of attribute correctness
    (attributes right only by chance) while the reader still reads the layout it was trained for.
    """
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p.target.layout, []).append(i)
    out = list(range(len(prompts)))
    for members in groups.values():
        for k, i in enumerate(members):
            out[i] = members[(k + 1) % len(members)]
    return out


def noise_images(n: int, size: int, seed: int) -> Tensor:
    """(n, 3, size, size) uniform noise in [0, 1], reproducible for a seed."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- scorers
@dataclass
class Scorer:
    """A separately trained model and how to feed it: its preprocess and tokenizer."""

    model: nn.Module
    preprocess: Callable[[Image.Image], Tensor]
    tokenizer: Callable[..., Tensor]
    context_length: int

    def images(self, images: Tensor) -> Tensor:
        """[0, 1] images -> the model's input, through the same PIL path as its training images."""
        pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (N, S, S, 3)
        return torch.stack([self.preprocess(Image.fromarray(p)) for p in pixels])

    def tokens(self, texts: Sequence[str]) -> Tensor:
        return self.tokenizer(list(texts), context_length=self.context_length)


@torch.no_grad()
def _embed(scorer: Scorer, images: Tensor, texts: Sequence[str], batch_size: int = 128) -> tuple[Tensor, Tensor]:
    model = scorer.model.eval()
    x = scorer.images(images)
    img = torch.cat([model.encode_image(x[i : i + batch_size], normalize=True).float() for i in range(0, len(x), batch_size)])
    tok = scorer.tokens(texts)
    txt = torch.cat([model.encode_text(tok[i : i + batch_size], normalize=True).float() for i in range(0, len(tok), batch_size)])
    return img, txt


def clip_score(scorer: Scorer, images: Tensor, texts: Sequence[str]) -> Tensor:
    """(N,) ``100 * max(cos(image_i, text_i), 0)`` with the scorer's normalised embeddings."""
    img, txt = _embed(scorer, images, texts)
    return 100 * (img * txt).sum(-1).clamp(min=0)


def distractor_sets(prompts: Sequence[Prompt], pool: Sequence[str], k: int, seed: int) -> list[list[str]]:
    """Per prompt: the prompt first, then ``k`` distinct pool captions other than it (seeded)."""
    rng = random.Random(seed)
    out = []
    for p in prompts:
        others = [c for c in dict.fromkeys(pool) if c != p.text]
        if len(others) < k:
            raise ValueError(f"distractors: the split has only {len(others)} other captions, asked for {k}")
        out.append([p.text] + rng.sample(others, k))
    return out


def recall_at_1(scores: Tensor) -> float:
    """Fraction of rows whose column 0 (the prompt) scores strictly above every other column.

    Args:
        scores: (N, 1 + K) score of each image against its prompt and its K distractors.
    """
    return float((scores[:, 0] > scores[:, 1:].max(dim=1).values).float().mean())


def dual_scores(scorer: Scorer, images: Tensor, candidates: Sequence[Sequence[str]]) -> Tensor:
    """(N, 1 + K) cosines of image i and its candidate captions."""
    texts = list(dict.fromkeys(t for row in candidates for t in row))
    index = {t: j for j, t in enumerate(texts)}
    img, txt = _embed(scorer, images, texts)
    cols = torch.tensor([[index[t] for t in row] for row in candidates])  # (N, 1 + K)
    return (img[:, None, :] * txt[cols]).sum(-1)


def itm_scores(scorer: Scorer, images: Tensor, candidates: Sequence[Sequence[str]]) -> Tensor:
    """(N, 1 + K) ITM matched probabilities of image i and its candidate captions."""
    texts = list(dict.fromkeys(t for row in candidates for t in row))
    index = {t: j for j, t in enumerate(texts)}
    score = itm_scorer(scorer.model.eval(), scorer.images(images), scorer.tokens(texts))
    cols = torch.tensor([[index[t] for t in row] for row in candidates])  # (N, 1 + K)
    rows = torch.arange(len(candidates))[:, None].expand_as(cols)
    return score(rows.reshape(-1), cols.reshape(-1)).view(cols.shape)


# ----------------------------------------------------------------------------- evaluation
@dataclass
class GenerationEval:
    """What to score and with what.

    Attributes:
        prompts: the prompts (see :func:`select_prompts`).
        pool: distractor captions (see :func:`canonical_captions`).
        reader: the attribute reader.
        dual: a dual encoder (CLIP score, R@1 by cosine).
        fusion: optionally a model with an ITM head (R@1 by ITM).
        distractors: K, captions each prompt competes with.
        seed: seeds generation, distractor choice and the noise row.
    """

    prompts: list[Prompt]
    pool: list[str]
    reader: AttributeReader
    dual: Scorer
    fusion: Scorer | None = None
    distractors: int = 99
    seed: int = 0
    candidates: list[list[str]] = field(init=False)

    def __post_init__(self) -> None:
        if self.fusion is not None and not has_itm(self.fusion.model):
            raise ValueError(f"fusion: {type(self.fusion.model).__name__} has no ITM head (itm_logits)")
        self.candidates = distractor_sets(self.prompts, self.pool, self.distractors, self.seed)

    def score(self, images: Tensor) -> dict[str, Any]:
        """Every score of images[i] drawn for prompts[i]."""
        if images.ndim != 4 or images.shape[0] != len(self.prompts) or images.shape[1] != 3:
            raise ValueError(f"images must be ({len(self.prompts)}, 3, S, S), got {tuple(images.shape)}")
        texts = [p.text for p in self.prompts]
        attributes = attribute_correctness(self.reader, images, [p.target for p in self.prompts])
        out: dict[str, Any] = {
            "clip_score": float(clip_score(self.dual, images, texts).mean()),
            "r1_dual": recall_at_1(dual_scores(self.dual, images, self.candidates)),
        }
        if self.fusion is not None:
            out["r1_itm"] = recall_at_1(itm_scores(self.fusion, images, self.candidates))
        out["single_shape_color"] = attributes.get("single", {}).get("shape_color")
        out["attributes"] = attributes
        return out

    def run(self, generate: GenerateFn | None, log: Callable[[str], None] = lambda s: None) -> tuple[dict[str, Any], Tensor | None]:
        """Scores of the generated row (if ``generate`` is given) and the reference rows.

        Returns:
            ``{row: scores}`` and the generated images (None without a generator).
        """
        texts = [p.text for p in self.prompts]
        real = load_images([p.image for p in self.prompts])
        rows: dict[str, Tensor] = {}
        generated = None
        if generate is not None:
            log(f"generating {len(texts)} images")
            generated = _check_generated(generate(texts, self.seed), len(texts))
            rows["generated"] = generated
        rows["real"] = real
        rows["shuffled"] = real[shuffled_pairing(self.prompts)]
        rows["noise"] = noise_images(len(texts), real.shape[-1], self.seed)
        results = {}
        for name, images in rows.items():
            log(f"scoring {name}")
            results[name] = self.score(images)
        return results, generated


def _check_generated(images: Any, n: int) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[:2] != (n, 3):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"the generator must return ({n}, 3, S, S) images, got {shape}")
    if not torch.isfinite(images).all():
        raise ValueError("the generator returned non-finite pixels")
    return images.float().clamp(0, 1)


# ----------------------------------------------------------------------------- report
def summary_table(results: dict[str, dict[str, Any]]) -> str:
    """Rows (generated, real, shuffled, noise) x headline scores, then attribute correctness per layout."""
    has_itm_col = any("r1_itm" in r for r in results.values())
    cols = ["clip_score", "r1_dual"] + (["r1_itm"] if has_itm_col else []) + ["single_shape_color"]
    lines = [f"{'row':<10}" + "".join(f"{c:>20}" for c in cols)]
    for name, r in results.items():
        lines.append(f"{name:<10}" + "".join(f"{_fmt(r.get(c)):>20}" for c in cols))
    attrs = ("shape", "color", "size", "shape_color", "position", "all")
    lines += ["", f"{'row':<10}{'layout':<11}{'n':>5}" + "".join(f"{a:>12}" for a in attrs)]
    for name, r in results.items():
        for layout, m in r["attributes"].items():
            lines.append(f"{name:<10}{layout:<11}{m['n']:>5}" + "".join(f"{m[a]:>12.3f}" for a in attrs))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


# ----------------------------------------------------------------------------- grid
def plot_generation_grid(prompts: Sequence[Prompt], images: Tensor, reader: AttributeReader, out_png: str | os.PathLike, *,
                         columns: int = 6, thumb_in: float = 1.6) -> Path:
    """A PNG grid: each image with its prompt under it and what the reader read, green when all of it
    (every attribute and the position) is right, red otherwise.

    Args:
        images: (N, 3, S, S) in [0, 1], image i drawn for ``prompts[i]``.
    """
    from textwrap import fill

    from coembed.eval.attribute_reader import object_scores, position_correct, read_images
    from coembed.viz import new_figure, save_png

    if len(prompts) != images.shape[0] or not len(prompts):
        raise ValueError(f"need one image per prompt and at least one, got {images.shape[0]} images for {len(prompts)} prompts")
    readings = read_images(reader, images, [p.target.layout for p in prompts])
    rows = -(-len(prompts) // columns)
    cell_h = thumb_in + 1.1  # room for four lines of text under each image
    fig = new_figure(columns * thumb_in * 1.25, rows * cell_h, dpi=100)
    pixels = images.clamp(0, 1).permute(0, 2, 3, 1).numpy()  # (N, S, S, 3)
    for i, (prompt, reading) in enumerate(zip(prompts, readings)):
        r, c = divmod(i, columns)
        ax = fig.add_axes((c / columns + 0.1 / columns, 1 - (r + 1) / rows + 1.1 / cell_h / rows, 0.8 / columns,
                           thumb_in / cell_h / rows))
        ax.imshow(pixels[i], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        scores = object_scores(reading, prompt.target)
        right = position_correct(reading, prompt.target) and all(all(v) for v in scores.values())
        read = "; ".join(" ".join((size, color, shape)) for shape, color, size in reading.objects)
        ax.set_xlabel(fill(prompt.text, 34) + "\nread: " + fill(read, 30), fontsize=5.5,
                      color="#2ca02c" if right else "#d62728")
    return save_png(fig, out_png)
