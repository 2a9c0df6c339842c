"""ReCo loss: loop reference on the drawn samples, sampler rules, closed form, gradients, SGD."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from raycseg.losses.reco import draw_reco_samples, reco_loss

NUM_CLASSES = 5


def make_inputs(seed=0, batch=2, dim=4, size=5, dtype=torch.float64):
    """Small batch: classes 0-3 present (class 4 absent), a few invalid pixels, class 3 all easy."""
    gen = torch.Generator().manual_seed(seed)
    rep = torch.randn(batch, dim, size, size, generator=gen, dtype=dtype).requires_grad_()
    label = torch.randint(0, 4, (batch, size, size), generator=gen)
    label[0, 0, :4] = torch.arange(4)  # every class 0-3 present
    label[1, 4, 4] = 255  # out of range: invalid
    label[1, 4, 3] = -1  # negative: invalid
    mask = torch.rand(batch, size, size, generator=gen) > 0.15
    mask[0, 0, :4] = True
    prob = torch.softmax(
        torch.randn(batch, NUM_CLASSES, size, size, generator=gen, dtype=dtype), dim=1
    )
    easy = label == 3
    prob = torch.where(
        easy.unsqueeze(1),
        F.one_hot(torch.full_like(label, 3), NUM_CLASSES).permute(0, 3, 1, 2).to(dtype),
        prob,
    )
    return rep, label, mask, prob


def valid_pixel_table(label, mask):
    """{flat pixel index: class} over valid pixels, by a plain loop."""
    batch, height, width = label.shape
    table = {}
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                c = int(label[b, y, x])
                if mask[b, y, x] and 0 <= c < NUM_CLASSES:
                    table[(b * height + y) * width + x] = c
    return table


def vector_at(rep, pixel):
    height, width = rep.shape[2:]
    b, rest = divmod(pixel, height * width)
    return rep[b, :, rest // width, rest % width]


def reference_loss(rep, label, mask, samples, tau):
    """The spec's formula on the drawn pixels, with plain loops."""
    table = valid_pixel_table(label, mask)
    classes = sorted(set(table.values()))
    prototypes = {}
    for c in classes:
        members = [vector_at(rep, p).detach() for p, cls in table.items() if cls == c]
        prototypes[c] = sum(members) / len(members)
    total = 0.0
    for row, slot in enumerate(samples.query_slots.tolist()):
        c = classes[slot]
        losses = []
        for j, query in enumerate(samples.query_index[row].tolist()):
            anchor = vector_at(rep, query)
            positive = torch.exp(F.cosine_similarity(anchor, prototypes[c], dim=0) / tau)
            denominator = positive
            for negative in samples.negative_index[row, j].tolist():
                denominator = denominator + torch.exp(
                    F.cosine_similarity(anchor, vector_at(rep, negative).detach(), dim=0) / tau
                )
            losses.append(-torch.log(positive / denominator))
        total = total + sum(losses) / len(losses)
    return total / len(classes)


SETTINGS = {"strong_threshold": 0.97, "temperature": 0.5, "num_queries": 3, "num_negatives": 4}


# ------------------------------------------------------------ equal to the loops


def test_matches_loop_reference_on_the_drawn_samples():
    rep, label, mask, prob = make_inputs()
    loss = reco_loss(rep, label, mask, prob, **SETTINGS, generator=torch.Generator().manual_seed(1))
    samples = draw_reco_samples(
        rep, label, mask, prob, **SETTINGS, generator=torch.Generator().manual_seed(1)
    )
    assert samples.classes.tolist() == [0, 1, 2, 3]
    assert 3 not in samples.classes[samples.query_slots].tolist()  # class 3 has no hard queries ...
    reference = reference_loss(rep, label, mask, samples, 0.5)  # ... but still divides by 4
    assert loss.dim() == 0
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(
        torch.autograd.grad(loss, rep)[0], torch.autograd.grad(reference, rep)[0]
    )


def test_sampler_follows_the_rules():
    rep, label, mask, prob = make_inputs(seed=2)
    samples = draw_reco_samples(
        rep, label, mask, prob, strong_threshold=0.97, num_queries=50, num_negatives=40,
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    table = valid_pixel_table(label, mask)
    flat_prob = prob.permute(0, 2, 3, 1).reshape(-1, NUM_CLASSES)
    for c in samples.classes.tolist():
        members = [vector_at(rep, p).detach() for p, cls in table.items() if cls == c]
        torch.testing.assert_close(
            samples.prototypes[samples.classes.tolist().index(c)], sum(members) / len(members)
        )
    for row, slot in enumerate(samples.query_slots.tolist()):
        c = samples.classes[slot].item()
        for query in samples.query_index[row].tolist():
            assert table.get(query) == c and flat_prob[query, c] < 0.97  # a valid, hard pixel of c
        for negative in samples.negative_index[row].flatten().tolist():
            assert negative in table and table[negative] != c  # a valid pixel of another class


def test_negative_classes_follow_the_class_relation_softmax_and_pixels_are_uniform():
    gen = torch.Generator().manual_seed(4)
    rep = torch.randn(1, 3, 6, 6, generator=gen)
    label = torch.arange(36).reshape(1, 6, 6) % 3
    mask = torch.ones(1, 6, 6, dtype=torch.bool)
    prob = torch.full((1, 3, 6, 6), 1 / 3)
    tau = 0.5
    samples = draw_reco_samples(
        rep, label, mask, prob, temperature=tau, num_queries=100, num_negatives=300, generator=gen
    )
    unit = F.normalize(samples.prototypes, dim=1)
    for row, slot in enumerate(samples.query_slots.tolist()):
        drawn_classes = label.flatten()[samples.negative_index[row].flatten()]
        others = [c for c in range(3) if c != slot]
        expected = torch.softmax(torch.stack([unit[slot] @ unit[c] for c in others]) / tau, dim=0)
        observed = torch.stack([(drawn_classes == c).double().mean() for c in others])
        torch.testing.assert_close(observed, expected.double(), atol=0.01, rtol=0)
        pixel_counts = Counter(samples.negative_index[row].flatten().tolist())
        for c, share in zip(
            others, expected.tolist(), strict=True
        ):  # 12 pixels per class, each equally likely
            per_pixel = [pixel_counts[p] / 30_000 for p in range(36) if p % 3 == c]
            assert max(abs(f - share / 12) for f in per_pixel) < 0.006
        query_counts = Counter(samples.query_index[row].tolist())
        assert set(query_counts) == {
            p for p in range(36) if p % 3 == slot
        }  # every hard pixel drawn


# ----------------------------------------------------------------- closed forms


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixels_at_their_class_means_give_the_closed_form(seed):
    rho, tau, negatives, classes = 0.3, 0.5, 16, 4
    means = torch.zeros(classes, classes + 1)
    means[:, 0] = math.sqrt(rho)
    means[torch.arange(classes), torch.arange(classes) + 1] = math.sqrt(
        1 - rho
    )  # unit, pairwise cosine rho
    gen = torch.Generator().manual_seed(seed)
    label = torch.randint(0, classes, (2, 6, 6), generator=gen)
    label[0, 0, :classes] = torch.arange(classes)
    rep = means[label].permute(0, 3, 1, 2).clone().requires_grad_()
    prob = torch.full((2, classes, 6, 6), 1 / classes)  # every pixel hard
    loss = reco_loss(rep, label, torch.ones_like(label, dtype=torch.bool), prob, temperature=tau,
                     num_queries=8, num_negatives=negatives, generator=gen)  # fmt: skip
    expected = math.log(1 + negatives * math.exp((rho - 1) / tau))
    torch.testing.assert_close(loss, torch.tensor(expected))


# --------------------------------------------------------- gradients and masking


def test_gradients_only_at_drawn_hard_query_pixels():
    rep, label, mask, prob = make_inputs(seed=5)
    loss = reco_loss(rep, label, mask, prob, **SETTINGS, generator=torch.Generator().manual_seed(6))
    loss.backward()
    samples = draw_reco_samples(
        rep, label, mask, prob, **SETTINGS, generator=torch.Generator().manual_seed(6)
    )
    has_grad = rep.grad.abs().sum(1).flatten() > 0
    assert set(has_grad.nonzero().flatten().tolist()) == set(samples.query_index.flatten().tolist())
    hard = prob.gather(1, label.clamp(0, NUM_CLASSES - 1).unsqueeze(1)).squeeze(1) < 0.97
    assert torch.all(hard.flatten()[has_grad]) and torch.all(mask.flatten()[has_grad])
    assert prob.grad is None


def test_zero_with_at_most_one_class():
    rep, label, mask, prob = make_inputs(seed=7)
    for one_class in (torch.zeros_like(label), torch.full_like(label, 255)):
        loss = reco_loss(rep, one_class, mask, prob, **SETTINGS)
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, rep)
        assert torch.all(grad == 0)
    no_hard = reco_loss(
        rep, label, mask, torch.ones_like(prob), **SETTINGS
    )  # classes present, none hard
    assert no_hard.item() == 0.0 and no_hard.requires_grad


def test_invalid_pixels_are_never_used():
    rep, label, mask, prob = make_inputs(seed=8)
    invalid = ~mask | (label < 0) | (label >= NUM_CLASSES)
    poisoned = rep.detach().clone().permute(0, 2, 3, 1)
    poisoned[invalid] = float("nan")
    poisoned = poisoned.permute(0, 3, 1, 2).requires_grad_()
    clean = reco_loss(
        rep, label, mask, prob, **SETTINGS, generator=torch.Generator().manual_seed(9)
    )
    dirty = reco_loss(
        poisoned, label, mask, prob, **SETTINGS, generator=torch.Generator().manual_seed(9)
    )
    torch.testing.assert_close(dirty, clean)
    dirty.backward()
    assert torch.isfinite(poisoned.grad).all()


def test_seeded_generator_reproduces_the_loss():
    rep, label, mask, prob = make_inputs(seed=10)
    runs = [
        reco_loss(rep, label, mask, prob, **SETTINGS, generator=torch.Generator().manual_seed(s))
        for s in (11, 11, 12)
    ]
    assert runs[0].item() == runs[1].item()
    assert runs[0].item() != runs[2].item()


# ------------------------------------------------------------------ SGD descent


def test_loss_falls_over_a_few_sgd_steps():
    rep, label, mask, prob = make_inputs(seed=13, size=8, dtype=torch.float32)
    rep = rep.detach().requires_grad_()
    optimizer = torch.optim.SGD([rep], lr=20.0)
    history = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = reco_loss(
            rep,
            label,
            mask,
            prob,
            num_queries=64,
            num_negatives=32,
            generator=torch.Generator().manual_seed(0),
        )
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < 0.9 * history[0]
