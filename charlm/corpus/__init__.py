"""Corpora: where text comes from, how it becomes ids on disk, and the catalog of named corpora.

One job per module, imports flowing one way (top to bottom; none imports a module above it):
- ``dataset``: tokenizer building, ids encoded to memmaps in a run's data/, TBPTT batches;
- ``describe``: `charlm corpus info`, what is in a corpus and which tokenizer suits it;
- ``text``: a file, a folder, a catalog name or the built-in corpus, read as UTF-8 in blocks;
  the first pass (character counts, sha256);
- ``tokenizers``: text <-> ids (char, sentencepiece); imports nothing of charlm.corpus;
- ``catalog``: recipes (the top-level corpora/ folder), the cache, downloads; imports nothing of
  charlm.corpus.
"""
