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

    # Model parallel == tensor parallel here (no pipeline parallelism).
    def get_model_parallel_rank(self) -> int:
        return ps.get_tensor_model_parallel_rank()

    def get_model_parallel_world_size(self) -> int:
        return ps.get_tensor_model_parallel_world_size()

    def get_model_parallel_group(self):
        return ps.get_tensor_model_parallel_group()

    def get_tensor_model_parallel_rank(self) -> int:
        return ps.get_tensor_model_parallel_rank()

    def get_tensor_model_parallel_world_size(self) -> int:
        return ps.get_tensor_model_parallel_world_size()

    def get_tensor_model_parallel_group(self):
        return ps.get_tensor_model_parallel_group()

    def get_tensor_model_parallel_src_rank(self) -> int:
        return ps.get_tensor_model_parallel_src_rank()

    def get_data_parallel_rank(self) -> int:
        return ps.get_data_parallel_rank()

    def get_data_parallel_world_size(self) -> int:
        return ps.get_data_parallel_world_size()

    def get_data_parallel_group(self):
        return ps.get_data_parallel_group()

    def get_data_parallel_group_ranks(self) -> list[int]:
        return dist.get_process_group_ranks(ps.get_data_parallel_group())

    def get_pipeline_model_parallel_world_size(self) -> int:
        return 1

    def get_pipeline_model_parallel_rank(self) -> int:
        return 0
