"""Label propagation through a video by feature affinities, as CRW's test code does it.

CRW (docs/methods/crw.md §4; `code/test.py`, `code/utils/test_utils.py`): the soft
labels of frame t are a weighted sum of the labels of its context's pixels,

* context: the first frame (its given labels, no spatial limit) and the previous
  `context` frames (their own predictions). Early frames repeat frame 0 to fill the
  context, as CRW pads the video with copies of its first frame, so frame 0 then
  appears several times among the candidates;
* affinity = the dot product of L2-normalised features; pixels of the short-term
  frames farther than `radius` feature cells (Euclidean distance >= radius) are out;
* the `topk` best context pixels are kept, and their labels are averaged with the
  softmax of affinity / `temperature`;
* the prediction is written back, so frame t is context for the frames after it.

Nothing is ever frames x pixels x pixels: the first frame is scored against the
target in chunks of query pixels, and each short-term frame only inside the
window that the radius allows, tile by tile (queries in `TILE` x `TILE` tiles, each
against the (TILE + 2 (radius - 1))^2 keys around it). The top-k of the union is
the top-k of each part's top-k, so the result is exact.

Shapes: features [T, D, h, w] (L2-normalised along D), labels [C, h, w] (one-hot
or soft, at the feature grid); queries are handled in tile-major order (`Tiling`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

TILE = 8
QUERY_CHUNK = 2048
WINDOW_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class PropagationSettings:
    """CRW's label propagation parameters (`code/utils/arguments.py` test_args, README)."""

    context: int = 20  # --videoLen: previous frames, besides the first
    radius: int = 12  # --radius, in feature cells; the first frame is not limited
    topk: int = 10  # --topk
    temperature: float = 0.05  # --temperature


class Tiling:
    """Query pixels in tile-major order and the key windows the radius allows around each tile.

    The grid h x w is padded to whole tiles; `to_tiles` / `from_tiles` convert a map
    [X, h, w] to the tile-major rows [n_tiles, TILE², X] and back, and `windows`
    gives each tile's key window [n_tiles, S², X] (S = TILE + 2 (radius - 1)) with
    positions outside the frame zeroed (`key_windows`: [n_tiles, X, S²], contiguous, as
    a batched matmul wants it); `window_bias` [n_tiles, TILE², S²] is 0 where a key may be
    chosen and -inf where it is outside the frame or too far from the query.
    """

    def __init__(self, height: int, width: int, radius: int, device: torch.device):
        self.height, self.width = height, width
        self.reach = max(radius - 1, 0)  # largest |dy| or |dx| with dy² + dx² < radius²
        self.tiles_y, self.tiles_x = -(-height // TILE), -(-width // TILE)
        self.window = TILE + 2 * self.reach
        valid = self.windows(torch.ones(1, height, width, device=device))[..., 0] > 0
        allowed = valid[:, None, :] & self._within_radius(radius, device)[None]
        self.window_bias = torch.zeros(allowed.shape, device=device).masked_fill_(
            ~allowed, float("-inf")
        )  # [n_tiles, TILE², S²]

    def _within_radius(self, radius: int, device: torch.device) -> Tensor:
        """[TILE², S²]: True where a window position lies within the radius of a tile pixel."""
        query = torch.arange(TILE, device=device) + self.reach
        key = torch.arange(self.window, device=device)
        dy = query[:, None, None, None] - key[None, None, :, None]
        dx = query[None, :, None, None] - key[None, None, None, :]
        return (dy**2 + dx**2 < radius**2).reshape(TILE * TILE, -1)

    def to_tiles(self, grid: Tensor) -> Tensor:
        """[X, h, w] -> [n_tiles, TILE², X] (padding pixels are zero)."""
        padded = F.pad(
            grid, (0, self.tiles_x * TILE - self.width, 0, self.tiles_y * TILE - self.height)
        )
        tiles = F.unfold(padded[None], TILE, stride=TILE)[0]  # [X * TILE², n_tiles]
        return tiles.view(grid.shape[0], TILE * TILE, -1).permute(2, 1, 0).contiguous()

    def from_tiles(self, rows: Tensor) -> Tensor:
        """[n_tiles, TILE², X] -> [X, h, w]."""
        x = rows.shape[-1]
        grid = rows.view(self.tiles_y, self.tiles_x, TILE, TILE, x).permute(4, 0, 2, 1, 3)
        grid = grid.reshape(x, self.tiles_y * TILE, self.tiles_x * TILE)
        return grid[:, : self.height, : self.width]

    def windows(self, grid: Tensor) -> Tensor:
        """[X, h, w] -> [n_tiles, S², X]: each tile's key window, zero outside the frame."""
        return self._unfolded(grid).permute(2, 1, 0)

    def key_windows(self, grid: Tensor) -> Tensor:
        """[X, h, w] -> [n_tiles, X, S²], contiguous: `windows` laid out for `torch.bmm`."""
        return self._unfolded(grid).permute(2, 0, 1).contiguous()

    def _unfolded(self, grid: Tensor) -> Tensor:
        """[X, S², n_tiles]: the zero-padded grid cut into each tile's window."""
        bottom = self.tiles_y * TILE - self.height + self.reach
        right = self.tiles_x * TILE - self.width + self.reach
        padded = F.pad(grid, (self.reach, right, self.reach, bottom))
        windows = F.unfold(padded[None], self.window, stride=TILE)[0]  # [X * S², n_tiles]
        return windows.view(grid.shape[0], self.window**2, -1)


def propagate_labels(
    features: Tensor, first_labels: Tensor, settings: PropagationSettings = PropagationSettings()
) -> Iterator[Tensor]:
    """Yield the soft labels [C, h, w] of every frame, frame 0's being `first_labels`.

    Args:
        features: [T, D, h, w], L2-normalised along D.
        first_labels: [C, h, w], frame 0's labels at the feature grid (one-hot, or
            bilinearly downsampled one-hot).
        settings: CRW's parameters.
    """
    frames, _, height, width = features.shape
    tiling = Tiling(height, width, settings.radius, features.device)
    topk = min(settings.topk, height * width)
    first_keys = features[0].flatten(1)  # [D, hw]
    bank = {0: first_labels}  # soft labels of the frames still in some context
    windows = _WindowCache(features, tiling, settings.context)
    yield first_labels
    for t in range(1, frames):
        queries = tiling.to_tiles(features[t])  # [n_tiles, TILE², D]
        scores, labels = [], []
        part = _first_frame_top(queries, first_keys, first_labels.flatten(1), topk)
        scores.append(part[0])
        labels.append(part[1])
        short_term = [max(0, t - settings.context + i) for i in range(settings.context)]
        for frame in sorted(set(short_term)):
            copies = short_term.count(frame)
            part = _window_top(queries, windows(frame), bank[frame], tiling, topk)
            scores += [part[0]] * copies
            labels += [part[1]] * copies
        best, chosen = torch.cat(scores, dim=-1).topk(topk, dim=-1)  # [n_tiles, TILE², k]
        candidates = torch.cat(labels, dim=-2)  # [n_tiles, TILE², K, C]
        chosen_labels = candidates.gather(
            2, chosen[..., None].expand(-1, -1, -1, candidates.shape[-1])
        )
        weights = torch.softmax(best / settings.temperature, dim=-1)
        prediction = tiling.from_tiles((weights[..., None] * chosen_labels).sum(dim=2))
        bank[t] = prediction
        if t - settings.context > 0:  # no later frame's short-term context holds it
            del bank[t - settings.context]
        yield prediction


class _WindowCache:
    """Each frame's key windows, cut once while the frame is in some context.

    Within `WINDOW_CACHE_BYTES` for a whole context; beyond it (wide features at
    high resolution) they are cut again for every target frame.
    """

    def __init__(self, features: Tensor, tiling: Tiling, context: int):
        self.features, self.tiling = features, tiling
        dim = features.shape[1]
        per_frame = tiling.window_bias.shape[0] * dim * tiling.window**2 * features.element_size()
        self.keep = context + 1 if per_frame * (context + 1) <= WINDOW_CACHE_BYTES else 0
        self.cached: dict[int, Tensor] = {}

    def __call__(self, frame: int) -> Tensor:
        if frame in self.cached:
            return self.cached[frame]
        windows = self.tiling.key_windows(self.features[frame])
        if self.keep:
            self.cached[frame] = windows
            while len(self.cached) > self.keep:
                del self.cached[min(self.cached)]
        return windows


def _first_frame_top(
    queries: Tensor, keys: Tensor, key_labels: Tensor, topk: int
) -> tuple[Tensor, Tensor]:
    """Top-k affinities [n_tiles, TILE², k] to every first-frame pixel and their labels [..., k, C]."""
    rows = queries.reshape(-1, queries.shape[-1])
    values, indices = [], []
    for start in range(0, rows.shape[0], QUERY_CHUNK):
        top = (rows[start : start + QUERY_CHUNK] @ keys).topk(topk, dim=-1)
        values.append(top.values)
        indices.append(top.indices)
    index = torch.cat(indices)
    labels = key_labels.t()[index]  # [rows, k, C]
    shape = queries.shape[:2]
    return torch.cat(values).view(*shape, topk), labels.view(*shape, topk, -1)


def _window_top(
    queries: Tensor, key_windows: Tensor, key_labels: Tensor, tiling: Tiling, topk: int
) -> tuple[Tensor, Tensor]:
    """Top-k affinities [n_tiles, TILE², k] inside each tile's radius window, and their labels."""
    scores = torch.bmm(queries, key_windows).add_(tiling.window_bias)
    values, index = scores.topk(min(topk, scores.shape[-1]), dim=-1)  # [n_tiles, TILE², k]
    label_windows = tiling.windows(key_labels)  # [n_tiles, S², C]
    flat = index.flatten(1)[..., None].expand(-1, -1, label_windows.shape[-1])
    labels = label_windows.gather(1, flat)  # [n_tiles, TILE² k, C]
    return values, labels.view(*index.shape, -1)
