"""Let Megatron's RoPE run on hosts without CUDA.

``RotaryEmbedding.get_emb`` (mcore 0.16) moves ``inv_freq`` to ``torch.cuda.current_device()`` the
first time it runs, which raises on a CPU-only host even though everything else is on the CPU.  The
patched method keeps ``inv_freq`` where it is when no CUDA device exists and defers to the original
otherwise, so GPU behaviour is unchanged.
"""

from __future__ import annotations

import torch

from litespark.patching import require_tested_version

TESTED = ("0.16.1",)
TARGET = "megatron.core.models.common.embeddings.rotary_pos_embedding.RotaryEmbedding.get_emb"


def _target_class():
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    return RotaryEmbedding


def apply() -> bool:
    """Install the patch when this host has no CUDA device; returns True when installed."""
    cls = _target_class()
    if getattr(cls.get_emb, "_litespark_patched", False):
        return True
    if torch.cuda.is_available():
        return False
    require_tested_version("megatron.core", __name__, TESTED)
    original = cls.get_emb

    def get_emb(self, max_seq_len: int, offset: int = 0) -> torch.Tensor:
        if self.inv_freq.device.type != "cpu" or torch.cuda.is_available():
            return original(self, max_seq_len, offset)
        freqs = self.get_freqs_non_repeated(max_seq_len, offset)
        if self.rotary_interleaved:
            emb = torch.stack((freqs.view(-1, 1), freqs.view(-1, 1)), dim=-1).view(freqs.shape[0], -1)
        else:
            emb = torch.cat((freqs, freqs), dim=-1)
        return emb[:, None, None, :]  # [s, 1, 1, dim], as the original returns

    get_emb._litespark_patched = True  # type: ignore[attr-defined]
    get_emb.__wrapped__ = original  # type: ignore[attr-defined]
    cls.get_emb = get_emb
    return True
