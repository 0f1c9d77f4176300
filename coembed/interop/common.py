"""What every foreign reader returns, and the helpers they share (layer counting, the QuickGELU rule)."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from coembed.errors import CheckpointError
from coembed.models.dual_encoder import DualEncoderConfig
from coembed.transforms import ImageTransform


@dataclass
class Foreign:
    """A checkpoint read from another library, already in coembed's names and configuration.

    Attributes:
        config: the model configuration that reproduces the source's computation.
        state_dict: tensors under coembed's parameter names.
        preprocess: the image preprocessing the source declares (or its library's default).
        tokenizer: a tokenizer, or None when the source's one cannot be built offline.
        dtype: floating dtype of the source's tensors (written back on conversion).
    """

    config: DualEncoderConfig
    state_dict: dict[str, torch.Tensor]
    preprocess: ImageTransform
    tokenizer: Any
    dtype: torch.dtype = torch.float32


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{s\}", r"(?P<s>weight|bias)")
    return re.compile(pattern + "$")


def rename(key: str, table: list[tuple[str, str]], *, reverse: bool = False) -> str:
    """Rename ``key`` by a table of ``(foreign, coembed)`` name templates ({i}: layer index, {s}: weight
    or bias); ``reverse`` renames coembed -> foreign. Keys the table does not know come back unchanged."""
    for theirs, ours in table:
        source, target = (ours, theirs) if reverse else (theirs, ours)
        if m := _template_regex(source).match(key):
            return target.format(**m.groupdict())
    return key


def count_layers(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of distinct ``{prefix}{i}.`` indices, e.g. ``visual.transformer.resblocks.``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    if found and found != set(range(len(found))):
        raise CheckpointError(f"layers under {prefix} are not numbered 0..{len(found) - 1}: {sorted(found)}")
    return len(found)


def source_dtype(state_dict: dict[str, torch.Tensor]) -> torch.dtype:
    """The dtype shared by the floating tensors (float32 when they disagree or there are none)."""
    dtypes = {v.dtype for v in state_dict.values() if v.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def resolve_quick_gelu(declared: bool | None, user: bool | None, guess: bool, source: str, why: str) -> bool:
    """QuickGELU from the user, else from the source's config, else a guess that is warned about.

    Args:
        declared: what the source's own config says (None: it says nothing).
        user: what the caller stated (None: nothing).
        guess: the value used when neither says.
        source: path named in warnings.
        why: the reason for the guess, shown in its warning.
    """
    if user is not None:
        if declared is not None and declared != user:
            warnings.warn(f"{source}: its config says quick_gelu={declared}, but quick_gelu={user} was given; using {user}",
                          stacklevel=3)
        return user
    if declared is not None:
        return declared
    warnings.warn(f"{source}: no config says whether the model uses QuickGELU; assuming quick_gelu={guess} ({why}). "
                  f"Pass quick_gelu={not guess} (CLI: --{'no-' if guess else ''}quick-gelu) if that is wrong.",
                  stacklevel=3)
    return guess
