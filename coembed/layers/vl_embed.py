"""Input embeddings of single-stream vision-language encoders (ViLT, VLMo).

Both modalities become width-sized tokens with their own learned position embeddings; a
modality-type embedding (ViLT's ``token_type_embeddings``: 0 text, 1 image) is added so that the
shared Transformer can tell a word from a patch once the two are concatenated.
"""

from __future__ import annotations

import torch
from torch import nn

from coembed.layers.patch_embed import ConvStem, stem_channels

STEMS = ("patch", "conv")
TEXT, IMAGE = 0, 1  # modality-type ids


def check_stem(stem: str, patch_size: int, width: int) -> None:
    """ValueError naming ``stem`` when it is not one of :data:`STEMS` or cannot be built."""
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    if stem == "conv":
        stem_channels(patch_size, width)


class TextEmbedding(nn.Module):
    """Token ids (B, T) -> word + position embeddings (B, T, width)."""

    def __init__(self, vocab_size: int, context_length: int, width: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, width)
        self.position_embeddings = nn.Parameter(torch.empty(context_length, width))
        nn.init.normal_(self.word_embeddings.weight, std=0.02)
        nn.init.normal_(self.position_embeddings, std=0.01)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, length), got {tuple(tokens.shape)}")
        if tokens.shape[1] > self.position_embeddings.shape[0]:
            raise ValueError(f"tokens have length {tokens.shape[1]} > context_length {self.position_embeddings.shape[0]}")
        return self.word_embeddings(tokens) + self.position_embeddings[: tokens.shape[1]]


class ImageEmbedding(nn.Module):
    """Images (B, 3, H, W) -> [image CLS; patches] + position embeddings (B, 1 + grid*grid, width).

    ``stem="patch"`` is ViLT's linear patch projection (one stride-``patch`` convolution, as ViT);
    ``"conv"`` the hybrid convolutional stem of :mod:`coembed.layers.patch_embed`.
    """

    def __init__(self, image_size: int, patch_size: int, width: int, stem: str = "patch") -> None:
        super().__init__()
        self.image_size = image_size
        self.proj = nn.Conv2d(3, width, patch_size, stride=patch_size) if stem == "patch" else ConvStem(patch_size, width)
        self.cls_token = nn.Parameter(torch.zeros(width))
        self.position_embeddings = nn.Parameter(torch.empty((image_size // patch_size) ** 2 + 1, width))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.position_embeddings, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(f"images must have shape (batch, 3, {self.image_size}, {self.image_size}), got {tuple(images.shape)}")
        x = self.proj(images).flatten(2).transpose(1, 2)  # (B, grid*grid, width)
        cls = self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, width)
        return torch.cat([cls, x], dim=1) + self.position_embeddings.to(x.dtype)


def key_mask(tokens: torch.Tensor, pad_id: int, image_tokens: int = 0) -> torch.Tensor:
    """Attention key mask (B, 1, 1, T + image_tokens): True for real text tokens and every image token."""
    real = tokens != pad_id  # (B, T)
    if image_tokens:
        real = torch.cat([real, real.new_ones(real.shape[0], image_tokens)], dim=1)
    return real[:, None, None, :]


class JointEmbedding(nn.Module):
    """Text and image embeddings plus the modality-type embedding, alone or concatenated (text first,
    then [image CLS] + patches, as ViLT)."""

    def __init__(self, *, vocab_size: int, context_length: int, image_size: int, patch_size: int, width: int,
                 stem: str, pad_id: int) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.text = TextEmbedding(vocab_size, context_length, width)
        self.image = ImageEmbedding(image_size, patch_size, width, stem)
        self.token_type_embeddings = nn.Embedding(2, width)
        nn.init.normal_(self.token_type_embeddings.weight, std=0.02)

    def embed_text(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids -> tokens (B, T, width) and key mask (B, 1, 1, T)."""
        x = self.text(tokens) + self.token_type_embeddings.weight[TEXT]
        return x, key_mask(tokens, self.pad_id)

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> tokens (B, 1 + P, width); no mask, every image token is real."""
        x = self.image(images)
        return x + self.token_type_embeddings.weight[IMAGE].to(x.dtype)

    def embed_joint(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs (image i, text i) -> sequence (B, T + 1 + P, width) and key mask (B, 1, 1, T + 1 + P)."""
        if images.shape[0] != tokens.shape[0]:
            raise ValueError(f"images and tokens must hold the same number of rows, got {images.shape[0]} and {tokens.shape[0]}")
        text, _ = self.embed_text(tokens)
        image = self.embed_image(images)
        return torch.cat([text, image.to(text.dtype)], dim=1), key_mask(tokens, self.pad_id, image.shape[1])
