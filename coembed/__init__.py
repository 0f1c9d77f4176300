"""coembed: models that map images and text into one shared representation space.

Quick use::

    import coembed
    model, preprocess, tokenizer = coembed.load("runs/demo")
    image_emb = model.encode_image(preprocess(img).unsqueeze(0), normalize=True)
    text_emb = model.encode_text(tokenizer(["a small red circle"]), normalize=True)
"""

from __future__ import annotations

from coembed.loading import Loaded, load, save
from coembed.models.dual_encoder import DualEncoder, DualEncoderConfig
from coembed.presets import create_model, get_preset, list_presets

__all__ = ["DualEncoder", "DualEncoderConfig", "Loaded", "create_model", "get_preset", "list_presets", "load", "save"]
__version__ = "0.1.0"
