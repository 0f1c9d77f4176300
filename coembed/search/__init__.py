"""Cross-modal search over a folder of images (needs the ``search`` extra: faiss-cpu).

- :mod:`~coembed.search.store`: SQLite metadata and vectors, with a FAISS index derived from them.
- :mod:`~coembed.search.indexer`: incremental, resumable indexing of a folder.
- :mod:`~coembed.search.query`: query expressions, query vectors and zero-shot tags.
- :mod:`~coembed.search.searcher`: ranked results for text, image and by-id queries.
"""
