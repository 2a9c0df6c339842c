"""Count the host-device synchronisations a block of torch code makes.

`HostSyncCounter` is a `TorchDispatchMode`: it sees every aten op below autograd
(the backward's too) and counts those whose result the host must wait for:

- reading a value: `aten._local_scalar_dense` (`.item()`, `int(t)`, `float(t)`,
  `bool(t)`, `if t:`), `aten.is_nonzero`, `aten.equal`;
- shapes that depend on the data: `aten.nonzero`, `aten.masked_select`, the
  `unique` family, `aten.repeat_interleave` without `output_size`, `aten.bincount`,
  and indexing (`aten.index`, `aten.index_put_`) with a boolean mask;
- copies from an accelerator to the CPU (seen only where there is one);
- `Tensor.tolist()` and `Tensor.numpy()`, which read a CPU tensor's memory without
  any aten op (on a GPU they go through such a copy): they are wrapped while counting.

On a CPU the same ops are counted: they are the ones that stall a GPU stream, so a
CPU run finds them before a GPU is at hand. `by_op` says which op made each.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

_ALWAYS = {
    aten._local_scalar_dense.default,
    aten.is_nonzero.default,
    aten.equal.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.bincount.default,
}
_BOOLEAN_INDEXING = {
    aten.index.Tensor,
    aten.index_put.default,
    aten.index_put_.default,
    aten._index_put_impl_.default,
}
_COPIES = {aten._to_copy.default, aten.copy_.default}
_HOST_READS = ("tolist", "numpy")


class HostSyncCounter(TorchDispatchMode):
    """`with HostSyncCounter() as syncs: ...`, then `syncs.count` and `syncs.by_op`."""

    def __init__(self):
        super().__init__()
        self.by_op: Counter[str] = Counter()

    @property
    def count(self) -> int:
        """Syncs counted so far."""
        return sum(self.by_op.values())

    def __enter__(self):
        self._unwrapped = {name: getattr(torch.Tensor, name) for name in _HOST_READS}
        for name, read in self._unwrapped.items():
            setattr(torch.Tensor, name, self._counted(name, read))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, read in self._unwrapped.items():
            setattr(torch.Tensor, name, read)
        return super().__exit__(*exc)

    def _counted(self, name, read):
        def counted(tensor, *args, **kwargs):
            if tensor.device.type == "cpu":  # a device tensor's copy is counted as an op
                self.by_op[name] += 1
            return read(tensor, *args, **kwargs)

        return counted

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _synchronises(func, args, kwargs):
            self.by_op[str(func.overloadpacket.__name__)] += 1
        return func(*args, **kwargs)


def _synchronises(func, args, kwargs) -> bool:
    if func in _ALWAYS:
        return True
    if func in _BOOLEAN_INDEXING:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices)
    if func is aten.repeat_interleave.Tensor or func is aten.repeat_interleave.self_Tensor:
        return kwargs.get("output_size") is None
    if func in _COPIES:
        return _device_to_host(func, args, kwargs)
    return False


def _device_to_host(func, args, kwargs) -> bool:
    if func is aten._to_copy.default:
        source, target = args[0], kwargs.get("device")
        return source.device.type != "cpu" and target is not None and target.type == "cpu"
    target, source = args[0], args[1]
    return source.device.type != "cpu" and target.device.type == "cpu"
