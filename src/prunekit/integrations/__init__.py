"""Optional integrations with training frameworks (import the submodule you need).

- :mod:`prunekit.integrations.lightning`: ``PrunerCallback`` for PyTorch Lightning (extra ``lightning``).
- :mod:`prunekit.integrations.hf_trainer`: ``PrunerTrainerCallback`` for the Hugging Face ``Trainer``
  (extra ``hf``).

Nothing here is imported by ``import prunekit``: the frameworks stay optional.
"""

from __future__ import annotations

__all__: list[str] = []
