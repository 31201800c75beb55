"""Module-level layer spec for Megatron-LM's ``--spec MODULE NAME``.

Megatron-LM resolves ``--spec`` with ``vars(module)[NAME]``, so the spec must exist as a plain module
variable: importing this module builds the Transformer Engine spec (and therefore needs TE and a
CUDA device).  Library code should call :func:`litespark.model.layer_spec.get_litespark_layer_spec`
instead; this module exists only for::

    pretrain_gpt.py --spec litespark.model.megatron_lm_spec te_layer_spec ...
"""

from litespark.model.layer_spec import get_litespark_layer_spec

te_layer_spec = get_litespark_layer_spec("te")
