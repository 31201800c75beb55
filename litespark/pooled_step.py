"""``install_pooled_step``: let the optimizer step borrow the layer graphs' idle memory.

Why: captured layers keep their activations, temporaries and gradient buffers in one private
memory pool (litespark/layer_graphs.py).  In eager mode the ZeRO optimizer step's transient buffers
(for llama-3b a 5.8 GiB flat bf16 gradient and its 11.7 GiB fp32 copy) reuse the activation memory
that the backward pass has just freed; with graphs that memory sits in the private pool, so the
step needs fresh memory on top: on an 80 GB H100 at micro-batch 2 this alone is out of memory.

Between the last backward replay of a step and the first forward replay of the next, nothing the
graphs wrote is still needed except the buffers that stay allocated in the pool (the allocator never
hands those out).  So the optimizer step can take its transient buffers from the pool's free blocks,
provided it frees all of them before the next replay.  The caching allocator hands a free block
only to the stream it was freed on, and the graphs were captured on torch's capture stream, so the
step runs on that stream (ordered after and before the training stream).  Two things would break
the arrangement, and both are handled:

- the first step creates the optimizer's state (AdamW's moments): it runs outside the pool;
- DeepSpeed keeps the step's gradient norm (a small tensor) until the next step: it is copied out.

After every pooled step the pool's allocated bytes are compared with those before it; anything else
left behind raises instead of being overwritten by the next replay.
"""

from __future__ import annotations

import torch

from litespark.log import get_logger

log = get_logger(__name__)


def pool_allocated_bytes(pool: "torch.cuda.MemPool") -> int:
    """Bytes currently allocated (live) in ``pool``, from the caching allocator's snapshot."""
    return sum(segment["allocated_size"] for segment in torch.cuda.memory_snapshot(pool.id))


def optimizer_state_ready(optimizer) -> bool:
    """Whether the inner (torch) optimizer has created state for every parameter it updates."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return all(p in inner.state for group in inner.param_groups for p in group["params"])


class _PooledStep:
    """Installed as ``optimizer.step``: runs the wrapped step with allocations served from ``pool``."""

    def __init__(self, optimizer, pool: "torch.cuda.MemPool", stream: "torch.cuda.Stream"):
        self.optimizer, self.pool, self.stream, self.step = optimizer, pool, stream, optimizer.step
        self.pooled = 0

    def __call__(self, *args, **kwargs):
        if not optimizer_state_ready(self.optimizer):  # this step creates persistent state
            return self.step(*args, **kwargs)
        before = pool_allocated_bytes(self.pool)
        training = torch.cuda.current_stream()
        self.stream.wait_stream(training)
        with torch.cuda.stream(self.stream), torch.cuda.use_mem_pool(self.pool):
            result = self.step(*args, **kwargs)
        # Tensors the training stream freed during the step (bf16 gradients) are reused only after this.
        training.wait_stream(self.stream)
        norm = getattr(self.optimizer, "_global_grad_norm", None)
        if isinstance(norm, torch.Tensor):  # read after the step (logging): must not stay in the pool
            self.optimizer._global_grad_norm = norm.clone()
        del norm
        left = pool_allocated_bytes(self.pool) - before
        if left:
            raise RuntimeError(f"kernels.cuda_graphs: the optimizer step left {left} bytes allocated in the CUDA-graph "
                               "memory pool, which the next replay would overwrite; set "
                               "kernels.cuda_graph_pooled_step=false")
        self.pooled += 1
        return result


def install_pooled_step(optimizer, pool: "torch.cuda.MemPool", stream: "torch.cuda.Stream") -> _PooledStep:
    """Replace ``optimizer.step`` (the DeepSpeed ZeRO optimizer the engine calls) by a step that
    allocates from ``pool`` on ``stream``, the stream the graphs in ``pool`` were captured on."""
    pooled = _PooledStep(optimizer, pool, stream)
    optimizer.step = pooled
    log.info("optimizer step: transient buffers served from the CUDA-graph memory pool")
    return pooled
