"""Corpora: reading and scanning text, tokenizers, token ids on disk (memmap) and TBPTT batches,
and the catalog of named corpora (recipes in the top-level corpora/ folder)."""
