"""What the model is: the Litespark layer spec, the modules it plugs into Megatron-Core's slots, and
``build_model`` (a Megatron ``GPTModel`` for a config).  How the model is trained lives in
:mod:`litespark.runtime` and :mod:`litespark.training`."""
