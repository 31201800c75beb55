"""A copy of a checkpoint's state in host memory, so that training can go on while the files are written.

An asynchronous save blocks training only while the state DeepSpeed hands to its checkpoint engine is
copied to host memory; a background thread then writes the files from the copy.  The copy keeps what
``torch.save`` would write: each storage is copied whole and every tensor is rebuilt on the copy with
its offset, size and strides, so views that share a storage still share it.  Only the device changes
(the files name host storages; DeepSpeed loads checkpoints to the CPU first either way).

The host buffers are kept and reused: the state has the same storages at every save, so only the
first save allocates.  On CUDA they are page-locked with ``cudaHostRegister`` (torch's pinned
allocator rounds every buffer up to a power of two, up to twice the memory), so the device-to-host
copies run at full bus speed and are issued without a synchronisation per tensor.

With ``overlap`` (``checkpoint.overlap_copy``) the copies run on a stream of their own, so that they
overlap the next step's forward and backward (which read the weights and leave the optimizer state
alone) instead of stopping training for them: each copy waits for the work the training stream had
issued when it was made, a temporary of the state dict keeps its memory until its copy is done, and
the caller waits for :meth:`HostCopies.finish`'s event before anything changes the state again (the
next optimizer step).  Without it they run on the training stream.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from litespark.log import get_logger

log = get_logger(__name__)

PIN_MIN_BYTES = 1 << 20
"""Smaller buffers stay pageable: they come from the heap and can share a page with another pinned
buffer, which ``cudaHostRegister`` refuses (page granularity), and copying them costs little anyway."""


class HostCopies:
    """Reusable host buffers that :meth:`copy` fills with a state dict's tensors.

    Buffers are keyed by the file they are for and the order the storages appear in its state, and
    reused when the size matches.  The device copies are asynchronous: after the last :meth:`copy` of a
    save, :meth:`finish` gives the event to wait for before the copies are read or their sources
    changed (None when every copy was synchronous: CPU tensors)."""

    def __init__(self, overlap: bool = False) -> None:
        self.overlap = overlap
        self._buffers: dict[tuple[str, int], torch.Tensor] = {}
        self._registered: dict[tuple[str, int], int] = {}
        self._pin_failed = False
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._issued: dict[torch.device, torch.cuda.Stream] = {}  # the streams copied on since the last finish()
        self.bytes_copied = 0
        self.bytes_allocated = 0

    def copy(self, name: str, state: Any) -> Any:
        """``state`` (nested dicts, lists and tuples of tensors and plain values) with every tensor
        replaced by a host copy held in this object's buffers for ``name``."""

        def fill(source: torch.UntypedStorage, index: int) -> torch.UntypedStorage:
            buffer = self._buffer(name, index, source.nbytes(), source.device)
            if source.nbytes():
                flat = torch.empty(0, dtype=torch.uint8, device=source.device).set_(source)
                if source.device.type == "cuda":
                    stream = self._copy_stream(source.device)
                    with torch.cuda.stream(stream):
                        buffer.copy_(flat, non_blocking=True)
                    if self.overlap:
                        # A temporary the state dict made (and drops when the save returns) keeps its
                        # memory until the copy is done, rather than going back to the training stream.
                        flat.record_stream(stream)
                else:
                    buffer.copy_(flat)
                self.bytes_copied += source.nbytes()
            return buffer.untyped_storage()

        return _rebuild(state, fill)

    def finish(self) -> torch.cuda.Event | None:
        """The copies issued since the last call are all there is of this save: the event that
        completes with them (None when none ran on a GPU).  Wait for it (``synchronize()``) before
        reading the copies or letting the training stream change what was copied."""
        if not self._issued:
            return None
        if len(self._issued) > 1:
            raise RuntimeError(f"one save copied from several GPUs ({sorted(map(str, self._issued))}); one per process")
        (stream,) = self._issued.values()
        event = torch.cuda.Event()
        event.record(stream)
        self._issued = {}
        return event

    def _copy_stream(self, device: torch.device) -> torch.cuda.Stream:
        """The stream copies from ``device`` run on: the training stream, or with ``overlap`` a stream
        of their own, ordered after the work the training stream has issued so far (the values to
        copy, temporaries the state dict made)."""
        training = torch.cuda.current_stream(device)
        if not self.overlap:
            stream = training
        else:
            if device not in self._streams:
                self._streams[device] = torch.cuda.Stream(device)
            stream = self._streams[device]
            stream.wait_stream(training)
        self._issued[device] = stream
        return stream

    def storage_sizes(self, state: Any) -> list[tuple[int, torch.device]]:
        """The bytes and device of each storage :meth:`copy` would copy from ``state``, in its order;
        nothing is copied."""
        sizes: list[tuple[int, torch.device]] = []

        def record(source: torch.UntypedStorage, index: int) -> None:
            sizes.append((source.nbytes(), source.device))

        _rebuild(state, record)
        return sizes

    def reserve(self, name: str, sizes: list[tuple[int, torch.device]]) -> None:
        """Allocate (and page-lock) the buffers that :meth:`copy` of a state with these
        :meth:`storage_sizes` will use for ``name``, so that the first copy does not pay for them."""
        for index, (nbytes, device) in enumerate(sizes):
            self._buffer(name, index, nbytes, device)

    def release(self) -> None:
        """Unregister and drop the buffers (the process keeps them otherwise, for the next save), once
        no copy into them is in flight."""
        for stream in self._streams.values():
            stream.synchronize()
        for key in list(self._registered):
            self._unpin(key)
        self._buffers = {}

    def _buffer(self, name: str, index: int, nbytes: int, device: torch.device) -> torch.Tensor:
        key = (name, index)
        buffer = self._buffers.get(key)
        if buffer is not None and buffer.numel() == nbytes:
            return buffer
        self._unpin(key)  # a storage that changed size: its old buffer goes
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        self.bytes_allocated += nbytes
        if device.type == "cuda" and nbytes >= PIN_MIN_BYTES:
            # Fault the pages in with torch's CPU threads first: cudaHostRegister would fault them one
            # by one, inside the driver call.
            buffer.zero_()
            self._pin(key, buffer)
        self._buffers[key] = buffer
        return buffer

    def _unpin(self, key: tuple[str, int]) -> None:
        ptr = self._registered.pop(key, None)
        if ptr is not None:
            torch.cuda.cudart().cudaHostUnregister(ptr)

    def _pin(self, key: tuple[str, int], buffer: torch.Tensor) -> None:
        """Page-lock ``buffer`` so that copies into it are true asynchronous DMA; a failure (no
        permission to lock that much memory) leaves it pageable and is logged once."""
        if self._pin_failed:
            return
        ptr, nbytes = buffer.data_ptr(), buffer.numel()
        cudart = torch.cuda.cudart()
        status = cudart.cudaHostRegister(ptr, nbytes, 1)  # cudaHostRegisterPortable
        if int(status) != 0:
            cudart.cudaGetLastError()  # else the next CUDA call in the process raises this error
            self._pin_failed = True
            log.warning(
                "checkpoint: could not page-lock %.1f GB of host memory for the asynchronous copy (CUDA error %s); "
                "copies go through pageable memory and block longer",
                nbytes / 1e9,
                int(status),
            )
            return
        self._registered[key] = ptr


def _rebuild(state: Any, storage_for: Callable[[torch.UntypedStorage, int], torch.UntypedStorage | None]) -> Any:
    """``state`` rebuilt with every tensor moved onto the storage ``storage_for(source storage, index)``
    returns (index: the order in which distinct storages are met).  A ``storage_for`` that returns None
    only visits: the tensors become None."""
    storages: dict[tuple, torch.UntypedStorage | None] = {}
    memo: dict[int, Any] = {}  # an object met twice stays one object, as pickle keeps it
    leaves: dict[int, Any] = {}  # copy.deepcopy's memo for the plain values

    def host_tensor(t: torch.Tensor) -> torch.Tensor | None:
        if type(t) not in (torch.Tensor, torch.nn.Parameter) or t.is_meta or t.is_conj() or t.is_neg():
            return t.detach().to("cpu", copy=True)  # subclasses, lazy conjugates: a plain blocking copy
        source = t.untyped_storage()
        # Empty storages have no address to tell them apart: each is its own.
        key = (source.device, source.data_ptr(), source.nbytes()) if source.nbytes() else ("empty", id(t))
        if key not in storages:
            storages[key] = storage_for(source, len(storages))
        storage = storages[key]
        if storage is None:
            return None
        out = torch.empty(0, dtype=t.dtype).set_(storage, t.storage_offset(), t.size(), t.stride())
        if isinstance(t, torch.nn.Parameter):
            return torch.nn.Parameter(out, requires_grad=t.requires_grad)
        return out.requires_grad_(t.requires_grad)

    def walk(obj: Any) -> Any:
        if id(obj) in memo:
            return memo[id(obj)]
        if isinstance(obj, torch.Tensor):
            out: Any = host_tensor(obj)
        elif isinstance(obj, OrderedDict):
            out = OrderedDict((k, walk(v)) for k, v in obj.items())
            # Module.state_dict() hangs the modules' versions on the dict (``_metadata``): pickled with it
            out.__dict__.update(copy.deepcopy(obj.__dict__, leaves))
        elif isinstance(obj, dict):
            out = {k: walk(v) for k, v in obj.items()}
        elif isinstance(obj, list):
            out = [walk(v) for v in obj]
        elif isinstance(obj, tuple):
            items = [walk(v) for v in obj]
            if all(a is b for a, b in zip(items, obj)):
                out = obj  # nothing mutable inside (torch.Size, shapes, betas): kept as it is
            elif hasattr(obj, "_fields"):
                out = type(obj)(*items)
            else:
                out = type(obj)(items)
        else:
            out = copy.deepcopy(obj, leaves)
        memo[id(obj)] = out
        return out

    return walk(state)
