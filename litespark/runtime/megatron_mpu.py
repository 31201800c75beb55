"""The ``mpu`` object DeepSpeed expects, backed by Megatron's ``parallel_state``.

DeepSpeed asks an mpu for the *model*-parallel rank/size/group (to avoid double-counting TP-split
parameters in the gradient norm and to broadcast from the right source) and for the *data*-parallel
group (what ZeRO shards over and reduces across).  Megatron's ``parallel_state`` names the former
``tensor_model_parallel``; this adapter translates, so ZeRO partitions over DP only.
"""

from __future__ import annotations

import torch.distributed as dist
from megatron.core import parallel_state as ps


class MegatronMPU:
    """DeepSpeed's mpu interface over Megatron's tensor- and data-parallel groups (no pipeline)."""

    get_tensor_model_parallel_rank = staticmethod(ps.get_tensor_model_parallel_rank)
    get_tensor_model_parallel_world_size = staticmethod(ps.get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_group = staticmethod(ps.get_tensor_model_parallel_group)
    get_tensor_model_parallel_src_rank = staticmethod(ps.get_tensor_model_parallel_src_rank)
    # DeepSpeed's "model parallel" is Megatron's tensor parallel here (no pipeline parallelism).
    get_model_parallel_rank = get_tensor_model_parallel_rank
    get_model_parallel_world_size = get_tensor_model_parallel_world_size
    get_model_parallel_group = get_tensor_model_parallel_group

    get_data_parallel_rank = staticmethod(ps.get_data_parallel_rank)
    get_data_parallel_world_size = staticmethod(ps.get_data_parallel_world_size)
    get_data_parallel_group = staticmethod(ps.get_data_parallel_group)

    @staticmethod
    def get_data_parallel_group_ranks() -> list[int]:
        return dist.get_process_group_ranks(ps.get_data_parallel_group())

    @staticmethod
    def get_pipeline_model_parallel_world_size() -> int:
        return 1

    @staticmethod
    def get_pipeline_model_parallel_rank() -> int:
        return 0
