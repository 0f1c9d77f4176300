"""Text generation: decoding algorithms (:mod:`.decoding`), what a captioner decodes with (:mod:`.spec`) and
captions from captioning models (:mod:`.captions`)."""

from coembed.generation.captions import METHODS, caption, decode_captions, generate, is_captioner
from coembed.generation.decoding import beam_search, greedy_search, nucleus_sampling, top_k_filter, top_p_filter
from coembed.generation.spec import DecodingSpec, decoding_spec

__all__ = ["METHODS", "DecodingSpec", "beam_search", "caption", "decode_captions", "decoding_spec", "generate", "greedy_search",
           "is_captioner", "nucleus_sampling", "top_k_filter", "top_p_filter"]
