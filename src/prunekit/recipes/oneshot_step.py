"""The ``oneshot`` recipe step: :class:`prunekit.OneShotConfig` in YAML.

.. code-block:: yaml

    prune:
      - what: oneshot          # one-shot calibration pruning (pk.prune_oneshot)
        method: refit          # magnitude | wanda | sparsegpt | refit (default)
        sparsity: 0.5
        pattern: null          # or "2:4"
        layer_ratios: null     # or owl, or {glob: sparsity}
        max_batches: null

The step's keys are exactly ``OneShotConfig``'s fields (less ``progress``, which the run decides);
``OneShotStep.config`` is the validated ``OneShotConfig`` that the runner passes to ``prune_oneshot``.
"""

from __future__ import annotations

from prunekit.recipes.steps import NOT_IN_RECIPES, OneShotStep


def config_keys() -> list[str]:
    """The keys a ``oneshot`` step accepts besides ``what`` (``OneShotConfig``'s fields)."""
    return OneShotStep.keys()


__all__ = ["NOT_IN_RECIPES", "OneShotStep", "config_keys"]
