"""Spec builders: the recipes that turn a paper's hooks into a registered mechanism.

- :mod:`.score_pipeline`: softmax-style mechanisms from a score modifier and a normaliser
  (reference, chunked and KV-cache incremental forms);
- :mod:`.mask_pipeline`: mechanisms that are softmax attention under a structured mask
  (reference, dense, block-sparse and chunked forms);
- :mod:`.linear_pipeline`: linear / gated recurrent mechanisms from a ``prepare`` function
  (parallel, chunked and recurrent stateful forms);
- :mod:`.kv_cache_step`: the incremental form of any mechanism that keeps every key.

Builders import kernels and never a family; families call builders.
"""
