"""The paper's training architectures inside SAELens: their configs (``config``), the SAEs
(``sae``: BatchTopK and Matryoshka-BatchTopK with a sparse hot path), the trainer-level recipe
(``trainer``) and their registration with SAELens (``registration``).

Every module here subclasses SAELens, so this package imports SAELens before any of them:
finishing that import runs the plugin's registration callback (``sae_vlm_plugin._import_hooks``),
which imports these modules - whole, not half-initialised, because none has started yet.
"""

import sae_lens  # noqa: F401
