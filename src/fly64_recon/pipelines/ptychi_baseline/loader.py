"""pty-chi's minibatches gathered with one index per batch instead of one per pattern.

pty-chi's ``PtychographyDataset.__getitem__`` returns one pattern per index and its
``DataLoader`` stacks them (``default_collate``). With the patterns on a GPU
(``save_data_on_device``) every index is a host-to-device copy and a device-to-host read
(a 0-dim CUDA tensor used as an index is read back with ``.item()``): two
synchronisations per pattern. ``batched(task)`` makes the task's loader gather each
batch with one index tensor instead: the same batches (same sampler, same generator,
same order) and the same ``(indices, patterns)`` tensors (dtype, device, shape, values),
so the reconstruction is bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class BatchedDataset:
    """pty-chi's dataset, read a batch at a time (DataLoader calls ``__getitems__``)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        return self.dataset[index]

    def __getitems__(self, batch: Any) -> list[Any]:
        """``[indices, patterns]``: what ``default_collate`` makes of the single items."""
        indices = batch_indices(batch, self.dataset.patterns.device)
        if indices is None:
            return _collate([self.dataset[index] for index in batch])
        # Read through to the dataset: Task.set_large_tensor_device replaces .patterns.
        return [indices, self.dataset.patterns[indices]]


def batch_indices(batch: Any, device: Any) -> Any:
    """The indices ``default_collate`` would stack, None if not ints or a 1-D tensor."""
    import torch

    if isinstance(batch, torch.Tensor):
        if batch.ndim != 1 or batch.is_floating_point() or batch.is_complex():
            return None
        # __getitem__ keeps a tensor index as it is, and stacking makes a copy: clone,
        # so pty-chi never holds the sampler's own tensor.
        return batch.clone()
    if isinstance(batch, Sequence) and all(_is_int(index) for index in batch):
        return torch.tensor(list(batch), dtype=torch.long, device=device)
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _collate(items: list[Any]) -> Any:
    from torch.utils.data import default_collate

    return default_collate(items)


def _as_is(batch: Any) -> Any:
    """The collate function of a batch ``__getitems__`` has already collated."""
    return batch


def batched(task: Any) -> Any:
    """The built ``task``, its loader gathering each of pty-chi's batches at once."""
    from torch.utils.data import DataLoader

    reconstructor = task.reconstructor
    loader = reconstructor.dataloader
    if isinstance(loader.dataset, BatchedDataset):
        return task
    if loader.num_workers != 0 or loader.batch_sampler is None:
        raise ValueError(
            "batched: pty-chi's loader must make batches in the main process "
            f"(num_workers {loader.num_workers}, batch_sampler {loader.batch_sampler})"
        )
    # The loader's own batch sampler (a BatchSampler over its RandomSampler, or LSQML's
    # compact/uniform sampler, which update_clusters later reaches through the loader)
    # and its generator, which each epoch's iterator and the RandomSampler both draw on.
    reconstructor.dataloader = DataLoader(
        BatchedDataset(reconstructor.dataset),
        batch_sampler=loader.batch_sampler,
        generator=loader.generator,
        collate_fn=_as_is,
    )
    return task
