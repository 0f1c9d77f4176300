"""Text generation: decoding algorithms (:mod:`.decoding`) and captions from captioning models (:mod:`.captions`)."""

from coembed.generation.captions import METHODS, caption, decode_captions, generate, is_captioner
from coembed.generation.decoding import beam_search, greedy_search, nucleus_sampling, top_k_filter, top_p_filter

__all__ = ["METHODS", "beam_search", "caption", "decode_captions", "generate", "greedy_search", "is_captioner",
           "nucleus_sampling", "top_k_filter", "top_p_filter"]
