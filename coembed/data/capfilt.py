"""BLIP's CapFilt (Li et al., 2022) on a captions.jsonl dataset (``coembed data capfilt``).

BLIP bootstraps its noisy web data with two models fine-tuned from the pre-trained one: a *captioner*
(the image-grounded decoder) writes synthetic captions for the web images, by nucleus sampling for
diversity, and a *filter* (the image-grounded encoder with its ITM head) removes the web and the synthetic
captions whose ITM head predicts "unmatched". A new model is then pre-trained on what is left.

Here, for each image of the input: the captioner writes ``synthetic`` captions (nucleus sampling,
seeded per batch), the filter scores every web and synthetic caption with its softmax ITM match
probability, captions scoring below ``threshold`` are dropped, and an image left with no caption is
dropped. Two more rules keep the manifest honest: an empty synthetic caption is dropped without a score
(``empty``) and a caption repeating one already kept for the image is dropped (``duplicate``; the loader
would merge it anyway). Unreadable images are counted and skipped.

Output, under ``out``:

- ``captions.jsonl``: the kept samples (image paths resolve from ``out``), each line with its input
  line's other fields and ``capfilt``: one ``{"origin": "web" | "synthetic", "score"}`` per kept caption.
- ``capfilt_scores.jsonl``: a settings line, then one line per input image with every caption, its origin
  and score (kept or not), or the reason the image was skipped: enough to re-threshold without the models.
- ``capfilt_report.json``: counts kept / dropped per origin and rule, the threshold.

Resumable: the scores are appended batch by batch to ``capfilt_scores.jsonl.partial`` (each batch in
one write, flushed); a rerun with the same settings and checkpoints keeps the complete batches and
continues after them, with the same random draws. A rerun after a finished run reuses all its scores
(only ``threshold`` may differ: re-thresholding runs no model). The manifest and the report are written atomically
at the end, so ``captions.jsonl`` is never half-written.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import accumulate
from pathlib import Path
from typing import Any

from PIL import Image

from coembed.data.corrupt import corruption_truth
from coembed.data.datasets import MANIFEST_JSONL, Sample, read_samples
from coembed.data.filters import _check_folders, _output_image
from coembed.errors import CheckpointError, DataError
from coembed.io import atomic_write_json, atomic_write_text
from coembed.transforms import ImageLoadError, load_image

ORIGINS = ("web", "synthetic")
SCORES_FILE = "capfilt_scores.jsonl"
AUTO = "auto"  # CapFiltConfig.threshold: calibrate it on a corrupted set with a known truth
REPORT_FILE = "capfilt_report.json"
EXAMPLES = 5

# captioner(images, seed) -> per image its synthetic captions; scorer(images, texts) -> per image the
# ITM match probability of each of its texts. Injected so the filter logic is testable without models.
Captioner = Callable[[list[Image.Image], int], list[list[str]]]
Scorer = Callable[[list[Image.Image], list[list[str]]], list[list[float]]]


@dataclass(kw_only=True)
class CapFiltConfig:
    """Settings of :func:`capfilt`.

    Attributes:
        synthetic: synthetic captions written per image (BLIP: 1); 0 only filters the web captions.
        threshold: keep a caption whose ITM match probability is >= this (BLIP: the ITM head's argmax, 0.5), or
            ``"auto"``: the threshold that classifies a corrupted calibration set best (:func:`choose_threshold`).
        top_p: nucleus mass of the captioner's sampling (BLIP: 0.9).
        max_length: tokens per synthetic caption, ``<sot>`` and ``<eot>`` included.
        batch_size: images per captioning / scoring batch (also the unit of resuming).
        seed: the captioner's sampling seed (batch ``i`` draws from ``seed`` and its first image's index).
    """

    synthetic: int = 1
    threshold: float | str = 0.5
    top_p: float = 0.9
    max_length: int = 32
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("synthetic", 0), ("max_length", 2), ("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.threshold != AUTO and (not _number(self.threshold) or not 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"threshold must be a number in [0, 1] or {AUTO!r}, got {self.threshold!r}")
        if not _number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be a number in (0, 1], got {self.top_p!r}")


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and not math.isnan(value)


@dataclass
class CapFiltReport:
    """What :func:`capfilt` kept and dropped.

    Attributes:
        images_in: samples read from the manifest (after its unreadable lines were skipped).
        images_kept: samples written.
        captions: origin -> {"in", "kept", "below threshold", "duplicate", "empty"} counts.
        dropped_images: reason ("no caption left", "unreadable image") -> count.
        examples: reason -> up to five ``{"image", "caption" or "detail"}`` examples.
        threshold: the ITM threshold.
        skipped_lines: manifest skip category -> count (lines read_samples could not use).
        resumed_images: images whose scores came from an earlier, interrupted run.
        manifest: the written manifest.
        calibration: how an ``"auto"`` threshold was chosen (:meth:`Calibration.to_dict`), else None.
    """

    images_in: int = 0
    images_kept: int = 0
    captions: dict[str, dict[str, int]] = field(default_factory=lambda: {o: {"in": 0, "kept": 0} for o in ORIGINS})
    dropped_images: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    threshold: float = 0.5
    skipped_lines: dict[str, int] = field(default_factory=dict)
    resumed_images: int = 0
    manifest: str = ""
    calibration: dict[str, Any] | None = None

    def count(self, origin: str, outcome: str) -> None:
        counts = self.captions[origin]
        counts[outcome] = counts.get(outcome, 0) + 1

    def drop_image(self, reason: str, example: dict[str, str]) -> None:
        self.dropped_images[reason] = self.dropped_images.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES:
            shown.append(example)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """Plain text: kept images, then one row per origin with its counts per outcome."""
        rows = [f"kept {self.images_kept} of {self.images_in} images (ITM threshold {self.threshold:g}) -> {self.manifest}"]
        if self.calibration:
            c = self.calibration
            rows.append(f"threshold chosen on {c['source']}: accuracy {c['accuracy']:.3f} on {c['captions']} captions "
                        f"({c['corrupted']} corrupted); dropped = corrupted: precision {c['precision']:.3f}, recall {c['recall']:.3f}")
        outcomes = ["in", "kept"] + sorted({k for c in self.captions.values() for k in c} - {"in", "kept"})
        rows.append(f"{'captions':<10}" + "".join(f"{o:>17}" for o in outcomes))
        for origin, counts in self.captions.items():
            rows.append(f"{origin:<10}" + "".join(f"{counts.get(o, 0):>17}" for o in outcomes))
        for reason, n in self.dropped_images.items():
            first = self.examples.get(reason, [{}])[0]
            rows.append(f"images dropped ({reason}): {n}  e.g. {first.get('image', '')} {first.get('detail', '')}".rstrip())
        for reason, n in self.skipped_lines.items():
            rows.append(f"manifest lines skipped ({reason}): {n}")
        return "\n".join(rows)


# ----------------------------------------------------------------------------- the filter rule
def decide(captions: Sequence[tuple[str, str, float | None]], threshold: float) -> list[tuple[str, str, float | None, str]]:
    """The outcome of each ``(text, origin, score)`` of one image, in order: ``"kept"``, ``"empty"`` (no
    text), ``"below threshold"`` (score < threshold) or ``"duplicate"`` (same text as a kept one).
    Returns ``(text, origin, score, outcome)`` tuples."""
    kept: set[str] = set()
    out = []
    for text, origin, score in captions:
        if not text.strip():
            outcome = "empty"
        elif score is None or score < threshold:
            outcome = "below threshold"
        elif text in kept:
            outcome = "duplicate"
        else:
            outcome = "kept"
            kept.add(text)
        out.append((text, origin, score, outcome))
    return out


# ----------------------------------------------------------------------------- scoring, batch by batch
def _load(root: Path, samples: Sequence[Sample]) -> tuple[list[Image.Image], list[int], dict[int, str]]:
    """The readable images of ``samples``, their positions, and position -> reason for the others."""
    images, good, bad = [], [], {}
    for i, sample in enumerate(samples):
        try:
            images.append(load_image(root / sample.image))
            good.append(i)
        except ImageLoadError as e:
            bad[i] = e.reason
    return images, good, bad


def batch_seed(seed: int, start: int) -> int:
    """The sampling seed of the batch whose first image is number ``start``: distinct per (seed, batch)."""
    return (seed * 1_000_003 + start) % 2**63


def score_batch(root: Path, samples: Sequence[Sample], start: int, captioner: Captioner | None, scorer: Scorer,
                cfg: CapFiltConfig) -> list[dict[str, Any]]:
    """One scores record per sample: ``{"image", "captions": [{"text", "origin", "score"}]}``, or with
    ``"skipped"`` (the reason) for an unreadable image."""
    images, good, bad = _load(root, samples)
    synthetic = captioner(images, batch_seed(cfg.seed, start)) if captioner and images and cfg.synthetic else [[] for _ in good]
    texts = [[*samples[i].captions, *(t for t in syn if t.strip())] for i, syn in zip(good, synthetic)]
    scores = iter(scorer(images, texts) if images else [])
    records: list[dict[str, Any]] = [{"image": s.image, "skipped": bad[i]} if i in bad else {} for i, s in enumerate(samples)]
    for i, syn, score in zip(good, synthetic, scores):
        web = [(t, "web") for t in samples[i].captions] + [(t, "synthetic") for t in syn if t.strip()]
        if len(score) != len(web):
            raise ValueError(f"scorer returned {len(score)} scores for {len(web)} captions")
        entries = [{"text": t, "origin": o, "score": float(p)} for (t, o), p in zip(web, score)]
        entries += [{"text": t, "origin": "synthetic", "score": None} for t in syn if not t.strip()]
        records[i] = {"image": samples[i].image, "captions": entries}
    return records


# ----------------------------------------------------------------------------- choosing the threshold
@dataclass
class Calibration:
    """A threshold chosen on a calibration set with a known truth (``coembed data corrupt``), and how well
    the filter's scores separated its intact from its corrupted captions.

    Attributes:
        source: the calibration folder.
        threshold: the chosen threshold.
        captions: captions scored.
        corrupted: of which corrupted.
        accuracy: share of captions whose decision is right at ``threshold`` (intact kept, corrupted dropped).
        precision: of the dropped captions, the share that was corrupted.
        recall: of the corrupted captions, the share dropped.
        auc: ROC AUC of the score separating intact (higher) from corrupted captions; 0.5 is chance.
    """

    source: str
    threshold: float
    captions: int
    corrupted: int
    accuracy: float
    precision: float
    recall: float
    auc: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_threshold(scores: Sequence[float], corrupted: Sequence[bool]) -> float:
    """The threshold at which "keep when score >= threshold" best matches "keep when intact" (accuracy),
    midway between the last dropped and the first kept score; the fewest drops among equally good cuts.

    Raises:
        ValueError: no scores, or as many flags as scores are not given.
    """
    if not scores or len(scores) != len(corrupted):
        raise ValueError(f"choose_threshold needs one corrupted flag per score, got {len(scores)} scores and {len(corrupted)} flags")
    ranked = sorted(zip(scores, corrupted))
    # dropping the k lowest scores is right for the corrupted among them and the intact above them
    intact_total = sum(not bad for _, bad in ranked)
    best_k, best_right, bad_below, good_below = 0, intact_total, 0, 0
    for k in range(1, len(ranked) + 1):
        bad_below += ranked[k - 1][1]
        good_below += not ranked[k - 1][1]
        if k < len(ranked) and ranked[k][0] == ranked[k - 1][0]:
            continue  # a threshold cannot split equal scores
        right = bad_below + intact_total - good_below
        if right > best_right:
            best_k, best_right = k, right
    if best_k == 0:
        return 0.0
    if best_k == len(ranked):
        return min(1.0, math.nextafter(ranked[-1][0], math.inf))
    return (ranked[best_k - 1][0] + ranked[best_k][0]) / 2


def measure_threshold(source: str, scores: Sequence[float], corrupted: Sequence[bool], threshold: float) -> Calibration:
    """The figures of :class:`Calibration` for ``threshold`` on these scores and flags."""
    dropped = [bad for score, bad in zip(scores, corrupted) if score < threshold]
    right = sum((score < threshold) == bad for score, bad in zip(scores, corrupted))
    good = [s for s, bad in zip(scores, corrupted) if not bad]
    bad = [s for s, b in zip(scores, corrupted) if b]
    auc = sum((g > b) + 0.5 * (g == b) for g in good for b in bad) / max(1, len(good) * len(bad))
    return Calibration(source=source, threshold=threshold, captions=len(scores), corrupted=len(bad), accuracy=right / len(scores),
                       precision=sum(dropped) / len(dropped) if dropped else float("nan"),
                       recall=sum(dropped) / len(bad) if bad else float("nan"), auc=auc)


def calibration_truth(folder: str | os.PathLike) -> dict[tuple[str, str], bool]:
    """The recorded truth of a calibration folder, or a DataError naming it (checked before loading models)."""
    try:
        return corruption_truth(folder)
    except (OSError, ValueError, KeyError, DataError) as e:
        raise DataError(f"calibration set {folder}: {e} (write it with `coembed data corrupt VAL_SPLIT OUT`)") from None


def calibrate(folder: str | os.PathLike, scorer: Scorer, batch_size: int = 32) -> Calibration:
    """Score every caption of a corrupted set (``coembed data corrupt``) and choose the threshold there.

    Raises:
        DataError: the folder is not a corrupted set, or it lacks intact or corrupted captions.
    """
    folder = Path(folder)
    truth = calibration_truth(folder)
    samples, _ = read_samples(folder)
    scores: list[float] = []
    flags: list[bool] = []
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        images, good, _ = _load(folder, batch)
        for i, probs in zip(good, scorer(images, [batch[i].captions for i in good]) if images else []):
            image = os.path.realpath(folder / batch[i].image)
            scores += [float(p) for p in probs]
            flags += [truth[(image, c)] for c in batch[i].captions]
    if all(flags) or not any(flags):
        raise DataError(f"calibration set {folder} needs both intact and corrupted captions (got {sum(flags)} corrupted "
                        f"of {len(flags)}); write it with `coembed data corrupt --fraction 0.5`")
    return measure_threshold(str(folder), scores, flags, choose_threshold(scores, flags))


# ----------------------------------------------------------------------------- resuming
def _header(cfg: CapFiltConfig, identity: dict[str, str]) -> dict[str, Any]:
    # The threshold only acts on the written scores, so a rerun may change it and still resume.
    settings = {k: v for k, v in asdict(cfg).items() if k != "threshold"}
    return {"capfilt": {**settings, **identity}}


def _resume(partial: Path, header: dict[str, Any], samples: Sequence[Sample], batch_size: int) -> list[dict[str, Any]]:
    """The complete batches of records an interrupted run left in ``partial``, or the records of a
    finished run (its scores file, so a rerun with another threshold reuses every score); the partial
    file is rewritten to hold only them; [] when there is neither.

    Raises:
        DataError: the partial file was written with other settings, checkpoints or input.
    """
    done = partial.with_name(SCORES_FILE)
    source = partial if partial.exists() else done if done.exists() else None
    if source is None:
        return []
    records = []
    for text in source.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(text))
        except json.JSONDecodeError:
            break  # a torn last write: everything from here is redone
    if not records or records[0] != header:
        raise DataError(f"{source} holds a CapFilt run with other settings or checkpoints; delete it or rerun with "
                        "the same ones")
    records = records[1:]
    if len(records) < len(samples):
        records = records[: len(records) // batch_size * batch_size]
    if any(r.get("image") != s.image for r, s in zip(records, samples)) or len(records) > len(samples):
        raise DataError(f"{source} was written for another input manifest; delete it to start over")
    atomic_write_text(partial, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in [header, *records]))
    return records


# ----------------------------------------------------------------------------- the command
def capfilt_samples(src: str | os.PathLike, out: str | os.PathLike, captioner: Captioner | None, scorer: Scorer,
                    cfg: CapFiltConfig, *, identity: dict[str, str] | None = None,
                    progress: Callable[[int, int], None] | None = None, calibration: Calibration | None = None) -> CapFiltReport:
    """CapFilt ``src`` into ``out`` with a given captioner and ITM scorer (see the module docstring).

    Args:
        src: dataset folder.
        out: output folder.
        captioner: writes ``cfg.synthetic`` captions per image; None writes none.
        scorer: the ITM match probabilities.
        cfg: settings.
        identity: what identifies the models (checkpoint paths), kept in the settings line: a rerun resumes
            only with the same.
        progress: called with (images done, total) after each batch.
        calibration: with ``cfg.threshold`` "auto", the :class:`Calibration` whose threshold applies.

    Raises:
        DataError: ``src`` is missing or has no usable manifest, ``out`` is a file or ``src``, or ``out``
            holds an interrupted run with other settings.
        ValueError: ``cfg.threshold`` is "auto" without a calibration.
    """
    if (cfg.threshold == AUTO) != (calibration is not None):
        raise ValueError("threshold 'auto' needs a calibration (and a calibration needs threshold 'auto')")
    if calibration is not None:
        cfg = replace(cfg, threshold=calibration.threshold)
    src, out = Path(src), Path(out)
    _check_folders(src, out)
    samples, skips = read_samples(src)
    out.mkdir(parents=True, exist_ok=True)
    partial, header = out / (SCORES_FILE + ".partial"), _header(cfg, identity or {})
    records = _resume(partial, header, samples, cfg.batch_size)
    resumed = len(records)
    if not records:
        atomic_write_text(partial, json.dumps(header) + "\n")
    with open(partial, "a", encoding="utf-8") as f:
        for start in range(len(records), len(samples), cfg.batch_size):
            batch = score_batch(src, samples[start : start + cfg.batch_size], start, captioner, scorer, cfg)
            f.write("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in batch))
            f.flush()
            records += batch
            if progress:
                progress(len(records), len(samples))
    report = CapFiltReport(images_in=len(samples), threshold=cfg.threshold, skipped_lines=dict(skips.by_reason),
                           resumed_images=resumed, manifest=str(out / MANIFEST_JSONL),
                           calibration=calibration.to_dict() if calibration else None)
    lines = [line for s, r in zip(samples, records) if (line := _manifest_line(src, out, s, r, cfg, report))]
    report.images_kept = len(lines)
    atomic_write_text(out / MANIFEST_JSONL, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    atomic_write_json(out / REPORT_FILE, report.to_dict())
    os.replace(partial, out / SCORES_FILE)
    return report


def _manifest_line(src: Path, out: Path, sample: Sample, record: dict[str, Any], cfg: CapFiltConfig,
                   report: CapFiltReport) -> dict[str, Any] | None:
    """The output line of one scored sample (counting its outcomes), or None when it is dropped."""
    if "skipped" in record:
        report.drop_image("unreadable image", {"image": sample.image, "detail": record["skipped"]})
        return None
    outcomes = decide([(c["text"], c["origin"], c["score"]) for c in record["captions"]], cfg.threshold)
    for _, origin, _, outcome in outcomes:
        report.count(origin, "in")
        report.count(origin, outcome)
    kept = [(t, o, p) for t, o, p, outcome in outcomes if outcome == "kept"]
    if not kept:
        report.drop_image("no caption left", {"image": sample.image, "detail": f"{len(outcomes)} dropped"})
        return None
    return {**sample.meta, "image": _output_image(src, out, sample.image, False, 0), "captions": [t for t, _, _ in kept],
            "capfilt": [{"origin": o, "score": round(p, 6)} for _, o, p in kept]}


# ----------------------------------------------------------------------------- the models
def model_captioner(loaded, cfg: CapFiltConfig) -> Captioner:
    """A :data:`Captioner` from a loaded captioning checkpoint (BLIP decoder, CoCa): nucleus sampling."""
    import torch

    from coembed.errors import ConfigError
    from coembed.generation.captions import caption

    context = loaded.model.cfg.text.context_length
    if cfg.max_length > context:
        raise ConfigError(f"max_length must be <= {context} (the captioner's context length), got {cfg.max_length}")

    def run(images: list[Image.Image], seed: int) -> list[list[str]]:
        batch = torch.stack([loaded.preprocess(im) for im in images])  # (B, 3, H, W)
        batch = batch.repeat_interleave(cfg.synthetic, dim=0)  # (B * K, 3, H, W): rows i*K .. i*K+K-1 are image i
        texts = caption(loaded.model, batch, loaded.tokenizer, "nucleus", top_p=cfg.top_p, max_length=cfg.max_length,
                        seed=seed)
        return [texts[i * cfg.synthetic : (i + 1) * cfg.synthetic] for i in range(len(images))]

    return run


def itm_scorer(loaded, max_pairs: int = 256) -> Scorer:
    """A :data:`Scorer` from a loaded checkpoint with an ITM head: softmax(itm_logits)[:, 1] per pair,
    ``max_pairs`` pairs per forward pass."""
    import torch

    from coembed.models.families import context_length

    model, length = loaded.model.eval(), context_length(loaded.model)

    @torch.no_grad()
    def run(images: list[Image.Image], texts: list[list[str]]) -> list[list[float]]:
        pixels = torch.stack([loaded.preprocess(im) for im in images])  # (B, 3, H, W)
        owner = torch.tensor([i for i, ts in enumerate(texts) for _ in ts], dtype=torch.long)
        flat = [t for ts in texts for t in ts]
        probs: list[float] = []
        for s in range(0, len(flat), max_pairs):
            tokens = loaded.tokenizer(flat[s : s + max_pairs], context_length=length)  # (P, T)
            logits = model.itm_logits(pixels[owner[s : s + max_pairs]], tokens)  # (P, 2)
            probs += logits.float().softmax(dim=-1)[:, 1].tolist()
        ends = [0, *accumulate(len(ts) for ts in texts)]
        return [probs[a:b] for a, b in zip(ends, ends[1:])]

    return run


def _checked(path: str | os.PathLike, flag: str, need: str):
    """Load the checkpoint of ``flag`` and check it has the head the step needs.

    Raises:
        CheckpointError: the model has no captioning head (``need`` "caption") or no ITM head ("itm").
    """
    from coembed.generation.captions import is_captioner
    from coembed.loading import load

    loaded = load(path)
    model = loaded.model
    family = model.cfg.to_dict().get("family", type(model).__name__) if hasattr(model, "cfg") else type(model).__name__
    if need == "caption" and not is_captioner(model):
        raise CheckpointError(f"{flag} {path} holds a {family} model, which has no captioning head; the captioner "
                              "must be a blip or coca checkpoint (coembed train --preset blip-tiny)")
    if need == "itm" and not callable(getattr(model, "itm_logits", None)):
        raise CheckpointError(f"{flag} {path} holds a {family} model, which has no ITM head; the filter must be a "
                              "fusion checkpoint (coembed train --preset albef-tiny)")
    if loaded.tokenizer is None:
        raise CheckpointError(f"{flag} {path} has no tokenizer coembed can read (add a tokenizer.json)")
    return loaded


def capfilt(src: str | os.PathLike, out: str | os.PathLike, captioner_ckpt: str | os.PathLike | None,
            filter_ckpt: str | os.PathLike, cfg: CapFiltConfig,
            progress: Callable[[int, int], None] | None = None,
            calibrate_dir: str | os.PathLike | None = None) -> CapFiltReport:
    """CapFilt ``src`` into ``out`` with a captioning checkpoint and an ITM checkpoint (run folders or
    checkpoint folders). ``captioner_ckpt`` may be None when ``cfg.synthetic`` is 0 (filter only).
    With ``cfg.threshold`` "auto", the filter first scores ``calibrate_dir`` (a corrupted set with its
    truth, e.g. a clean val split through ``coembed data corrupt``) and the threshold is chosen there.

    Raises:
        CheckpointError: the captioner has no captioning head or the filter no ITM head.
        ConfigError: synthetic captions asked for without a captioner; "auto" without ``calibrate_dir`` or
            the other way round.
        DataError: as :func:`capfilt_samples`, or ``calibrate_dir`` is not a corrupted set.
    """
    from coembed.errors import ConfigError

    if cfg.synthetic and captioner_ckpt is None:
        raise ConfigError("synthetic captions need a captioner checkpoint (or set synthetic to 0)")
    if (cfg.threshold == AUTO) != (calibrate_dir is not None):
        raise ConfigError("threshold 'auto' and a calibration set go together: give both or neither")
    _check_folders(Path(src), Path(out))  # before the (slow) model loading
    if calibrate_dir is not None:
        calibration_truth(calibrate_dir)
    scorer = itm_scorer(_checked(filter_ckpt, "--filter", "itm"))
    calibration = calibrate(calibrate_dir, scorer, cfg.batch_size) if calibrate_dir is not None else None
    captioner = model_captioner(_checked(captioner_ckpt, "--captioner", "caption"), cfg) if cfg.synthetic else None
    identity = {"filter": os.path.realpath(filter_ckpt),
                "captioner": os.path.realpath(captioner_ckpt) if captioner is not None else ""}
    return capfilt_samples(src, out, captioner, scorer, cfg, identity=identity, progress=progress, calibration=calibration)
