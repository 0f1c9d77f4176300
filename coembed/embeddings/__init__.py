"""Embedding large image collections into clip-retrieval-style ``.npy`` + JSONL partitions.

- :mod:`~coembed.embeddings.layout`: the output files, the shared plan and the completion markers.
- :mod:`~coembed.embeddings.worker`: one worker's share (``--shard i --num-shards n``), resumable.

The search store reads finished partitions with :func:`coembed.search.merge.merge_embeddings`.
"""
