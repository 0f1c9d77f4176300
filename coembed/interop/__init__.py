"""Adapters to and from other libraries' checkpoints: OpenCLIP/OpenAI state dicts (:mod:`.openclip`)
and Hugging Face ``CLIPModel`` / ``SiglipModel`` folders (:mod:`.hf`). They read and write files
only (safetensors, JSON, weights-only torch files); none imports open_clip, timm or transformers."""
