"""Direct preference optimisation (DPO) on the Litespark engine: preference examples and losses."""
