"""Tiny random-weight models and synthetic images, built offline in well under a second.

One world for the tests, the benchmarks and ``sae-vlm demo --random`` (the pipeline without
learned features); the trained toy world is ``sae_vlm_plugin.toy``.

- ``models``: every supported family's encoder (CLIP, SigLIP, AIMv2, WebSSL, open_clip) and a
  LLaVA-1.5-layout model, from config objects with fixed seeds, in one shape convention;
- ``images``: synthetic concept images (shapes x colours x textures) with known labels;
- ``llava``: a LLaVA under the demo's CLIP tower with a random Llama and a word-level
  vocabulary.

It imports nothing of the plugin above it, so any floor's tests can use it.
"""
