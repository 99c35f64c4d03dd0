"""Pretrained SAEs for vision models: a YAML registry that SAELens' ``SAE.from_pretrained`` reads.

| module | job |
|---|---|
| ``schema`` | the YAML format (SAELens' ``pretrained_saes.yaml`` plus vision metadata), validated strictly |
| ``registry`` | the releases the plugin knows: shipped ``pretrained_yaml/*.yaml`` and user files |
| ``sae_lens_bridge`` | the one place that touches SAELens internals to make it see those releases |
| ``converters`` | SAELens conversion functions: the paper's checkpoints and SAELens-format exports |
| ``files`` | where a release's files come from (HF repo / cache, local folder); safe tensor loading |
| ``loading`` | ``load_sae`` (SAE + hook, tokens, model), the attach check, export to SAELens format |
| ``commands`` | the ``sae-vlm pretrained ...`` subcommands |

This package's ``__init__`` imports nothing, so that ``registry`` (which ``import sae_vlm_plugin``
uses) stays free of torch and SAELens.
"""
