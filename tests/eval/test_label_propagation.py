"""Label propagation: exact against CRW's dense loop; oracle features score J&F 1.0."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raycseg.config.eval_schema import DavisSection
from raycseg.data.synthetic_clips import SyntheticConfig, render_clip_objects
from raycseg.eval.davis import propagate_masks
from raycseg.eval.davis_scores import score_sequence, summarise
from raycseg.eval.label_propagation import PropagationSettings, propagate_labels


def crw_reference(features: torch.Tensor, first: torch.Tensor, settings: PropagationSettings):
    """CRW's test loop written plainly: the video front-padded with `context` copies of
    frame 0, every affinity dense, -1e10 beyond the radius in the short-term frames."""
    frames, _, height, width = features.shape
    padded = [0] * settings.context + list(range(frames))
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.flatten().float(), xs.flatten().float()
    near = ((ys[:, None] - ys[None]) ** 2 + (xs[:, None] - xs[None]) ** 2).sqrt() < settings.radius
    labels, out = {0: first}, [first]
    for t in range(1, frames):
        query = features[t].flatten(1).t()
        context = [0] + [padded[t + i] for i in range(settings.context)]
        scores, context_labels = [], []
        for position, frame in enumerate(context):
            affinity = query @ features[frame].flatten(1)
            if position > 0:  # short-term frames only
                affinity = torch.where(near, affinity, torch.tensor(-1e10))
            scores.append(affinity)
            context_labels.append(labels[frame].flatten(1).t())
        values, index = (torch.cat(scores, 1) / settings.temperature).topk(settings.topk, dim=1)
        weights = torch.softmax(values, dim=1)
        prediction = (weights[..., None] * torch.cat(context_labels)[index]).sum(1)
        labels[t] = prediction.t().reshape(-1, height, width)
        out.append(labels[t])
    return out


@pytest.mark.parametrize(
    "frames, dim, height, width, context, radius",
    [(9, 8, 13, 21, 4, 3), (6, 16, 17, 10, 20, 12), (5, 4, 9, 9, 2, 1), (4, 8, 3, 30, 2, 40)],
)
def test_tiled_propagation_equals_the_dense_crw_loop(frames, dim, height, width, context, radius):
    generator = torch.Generator().manual_seed(frames * 100 + radius)
    features = F.normalize(torch.randn(frames, dim, height, width, generator=generator), dim=1)
    ids = torch.randint(0, 3, (height, width), generator=generator)
    first = F.one_hot(ids, 3).permute(2, 0, 1).float()
    settings = PropagationSettings(context=context, radius=radius, topk=10, temperature=0.05)
    ours = list(propagate_labels(features, first, settings))
    reference = crw_reference(features, first, settings)
    assert len(ours) == frames
    for mine, theirs in zip(ours, reference, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def generated_sequences(count: int = 3, frames: int = 10, size: int = 40):
    """(frames, object ids) of generated multi-object sequences, void-free."""
    cfg = SyntheticConfig(image_size=size, frames=frames, min_objects=2, max_objects=3)
    for index in range(count):
        _, _, ids = render_clip_objects(np.random.default_rng([7, index]), cfg)
        visible = np.unique(ids[0])
        table = np.zeros(256, dtype=np.uint8)
        table[visible] = np.arange(len(visible))  # 0, 1..N in frame-0 order; hidden -> 0
        yield table[ids]


def score(sequences, make_features, settings) -> float:
    results = {}
    for index, ids in enumerate(sequences):
        features = make_features(ids)
        num_objects = int(ids[0].max())
        predicted = propagate_masks(features, ids[0], num_objects, settings)
        results[str(index)] = score_sequence(list(ids), predicted)
    return summarise(results)["jf_mean"]


def oracle_features(ids: np.ndarray) -> torch.Tensor:
    """One-hot of the true object id at every pixel: [T, N + 1, H, W]."""
    return F.one_hot(torch.from_numpy(ids).long()).permute(0, 3, 1, 2).float()


def test_oracle_features_propagate_every_object_perfectly():
    sequences = list(generated_sequences())
    assert all(ids[0].max() >= 2 for ids in sequences), "multi-object sequences"
    settings = DavisSection(feature_stride=1)  # features at every pixel
    assert score(sequences, oracle_features, settings) == 1.0


def test_random_features_score_far_lower_than_the_oracle():
    generator = torch.Generator().manual_seed(0)

    def random_features(ids: np.ndarray) -> torch.Tensor:
        frames, height, width = ids.shape
        grid = (-(-height // 8), -(-width // 8))
        return F.normalize(torch.randn(frames, 32, *grid, generator=generator), dim=1)

    assert score(list(generated_sequences()), random_features, DavisSection()) < 0.3
