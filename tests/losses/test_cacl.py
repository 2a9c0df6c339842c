"""CACL losses: loop references, closed forms, SGD descent, and the two-rank gather criterion."""

from __future__ import annotations

import math

import pytest
import torch
from gloo_ranks import run_gloo_ranks

from raycseg.distributed import all_gather_no_grad, all_gather_with_grad
from raycseg.losses import cacl
from raycseg.losses.cacl import (
    CACLLoss,
    cycle_attention_loss,
    draw_pixel_negatives,
    global_contrast_loss,
    pixel_rematch_loss,
)

# ---------------------------------------------------------------- loop references


def unit(vector: torch.Tensor) -> torch.Tensor:
    return vector / vector.norm()


def reference_global(g: torch.Tensor, g_pos: torch.Tensor, tau: float) -> torch.Tensor:
    frames = [unit(v) for v in g] + [unit(v) for v in g_pos]
    batch = g.shape[0]
    losses = []
    for anchor in range(2 * batch):
        positive = anchor + batch if anchor < batch else anchor - batch
        denominator = sum(
            torch.exp(frames[anchor] @ frames[other] / tau)
            for other in range(2 * batch)
            if other != anchor
        )
        losses.append(-torch.log(torch.exp(frames[anchor] @ frames[positive] / tau) / denominator))
    return sum(losses) / len(losses)


def reference_pixel(p, p_pos, u, u_pos, negatives, tau):
    batch, _, nodes = p.shape
    losses = []
    for b in range(batch):
        for anchors, partners, keys, partner_keys in ((p, p_pos, u, u_pos), (p_pos, p, u_pos, u)):
            for i in range(nodes):
                best, best_j = -math.inf, 0
                for j in range(nodes):  # strict '>' keeps the lowest index on ties
                    score = (unit(keys[b, :, i]) @ unit(partner_keys[b, :, j])).item()
                    if score > best:
                        best, best_j = score, j
                anchor = unit(anchors[b, :, i])
                positive = torch.exp(anchor @ unit(partners[b, :, best_j]) / tau)
                denominator = positive
                if negatives is not None:
                    for negative in negatives[b]:
                        denominator = denominator + torch.exp(anchor @ unit(negative) / tau)
                losses.append(-torch.log(positive / denominator))
    return sum(losses) / len(losses)


def reference_cycle(c: torch.Tensor, c_pos: torch.Tensor, tau: float) -> torch.Tensor:
    losses = []
    for b in range(c.shape[0]):
        a = torch.nn.functional.normalize(c[b], dim=0)
        z = torch.nn.functional.normalize(c_pos[b], dim=0)
        similarity = a.T @ z
        for s in (similarity, similarity.T):  # start on v, then on v+
            walk = torch.softmax(s / tau, dim=1) @ torch.softmax(s.T / tau, dim=1)
            losses.extend(-torch.log(walk[i, i]) for i in range(walk.shape[0]))
    return sum(losses) / len(losses)


def leaves(*shapes, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_() for shape in shapes]


def grads_of(loss, tensors):
    return torch.autograd.grad(loss, tensors)


# ------------------------------------------------------------- equal to the loops


def test_global_loss_matches_loop_reference_and_grads():
    g, g_pos = leaves((3, 5), (3, 5))
    ours = global_contrast_loss(g, g_pos, temperature=0.3)
    ref = reference_global(g, g_pos, 0.3)
    assert ours.dim() == 0
    torch.testing.assert_close(ours, ref.to(ours.dtype), rtol=1e-5, atol=1e-6)
    for mine, theirs in zip(grads_of(ours, [g, g_pos]), grads_of(ref, [g, g_pos]), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("with_negatives", [True, False])
def test_pixel_loss_matches_loop_reference_and_grads(with_negatives):
    p, p_pos, u, u_pos, negatives = leaves(
        (2, 4, 6), (2, 4, 6), (2, 3, 6), (2, 3, 6), (2, 5, 4), seed=1
    )
    negatives = negatives if with_negatives else None
    ours = pixel_rematch_loss(p, p_pos, u, u_pos, negatives, temperature=0.25)
    ref = reference_pixel(p, p_pos, u, u_pos, negatives, 0.25)
    torch.testing.assert_close(ours, ref.to(ours.dtype), rtol=1e-5, atol=1e-6)
    if with_negatives:
        for mine, theirs in zip(grads_of(ours, [p, p_pos]), grads_of(ref, [p, p_pos]), strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_pixel_loss_is_the_same_over_many_logits_chunks(monkeypatch):
    p, p_pos, u, u_pos, negatives = leaves(
        (2, 4, 9), (2, 4, 9), (2, 3, 9), (2, 3, 9), (2, 5, 4), seed=13
    )
    whole = pixel_rematch_loss(p, p_pos, u, u_pos, negatives)
    whole_grads = grads_of(whole, [p, p_pos])
    monkeypatch.setattr(cacl, "_LOGITS_CHUNK_ELEMENTS", 20)  # two nodes per chunk
    chunked = pixel_rematch_loss(p, p_pos, u, u_pos, negatives)
    torch.testing.assert_close(chunked, whole)
    for mine, theirs in zip(grads_of(chunked, [p, p_pos]), whole_grads, strict=True):
        torch.testing.assert_close(mine, theirs)


def test_pixel_loss_gives_no_gradient_to_matching_maps_or_negatives():
    p, p_pos, u, u_pos, negatives = leaves(
        (2, 4, 6), (2, 4, 6), (2, 3, 6), (2, 3, 6), (2, 5, 4), seed=2
    )
    pixel_rematch_loss(p, p_pos, u, u_pos, negatives).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert u.grad is None and u_pos.grad is None and negatives.grad is None


def test_cycle_loss_matches_explicit_walk_matrix_and_grads():
    c, c_pos = leaves((2, 4, 7), (2, 4, 7), seed=3)
    ours = cycle_attention_loss(c, c_pos, temperature=0.1)
    ref = reference_cycle(c, c_pos, 0.1)
    torch.testing.assert_close(ours, ref.to(ours.dtype), rtol=1e-5, atol=1e-6)
    for mine, theirs in zip(grads_of(ours, [c, c_pos]), grads_of(ref, [c, c_pos]), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_cycle_edge_dropout_uses_one_independent_mask_per_transition():
    c, c_pos = leaves((2, 3, 5), (2, 3, 5), seed=4)
    rate, tau = 0.3, 0.2
    torch.manual_seed(7)
    ours = cycle_attention_loss(c, c_pos, temperature=tau, edge_dropout=rate)
    torch.manual_seed(7)  # replay the draws in the documented order: forward mask, backward mask
    shape = (2, 5, 5)
    forward_dropped = torch.rand(shape, dtype=torch.float64) < rate
    backward_dropped = torch.rand(shape, dtype=torch.float64) < rate
    normalise = torch.nn.functional.normalize
    losses = []
    for b in range(2):
        s = normalise(c[b], dim=0).T @ normalise(c_pos[b], dim=0) / tau
        forward = torch.softmax(s.masked_fill(forward_dropped[b], -1e20), dim=1)  # v -> v+
        back = torch.softmax(s.masked_fill(backward_dropped[b], -1e20), dim=0).T  # v+ -> v
        losses.extend(-torch.log(torch.diagonal(forward @ back) + 1e-20))  # start on v
        losses.extend(-torch.log(torch.diagonal(back @ forward) + 1e-20))  # start on v+
    expected = sum(losses) / len(losses)
    assert any(loss > 40 for loss in losses)  # this draw blocks every return path of some node
    torch.testing.assert_close(ours, expected.to(ours.dtype), rtol=1e-5, atol=1e-6)
    assert not torch.isclose(ours, cycle_attention_loss(c, c_pos, temperature=tau))


# ----------------------------------------------------------------- closed forms


def test_all_equal_similarities_give_log_of_candidate_count():
    batch, dim, nodes, negatives = 4, 3, 5, 6
    same = torch.ones(dim)
    g = same.expand(batch, dim).clone().requires_grad_()
    torch.testing.assert_close(
        global_contrast_loss(g, g.detach().clone()), torch.tensor(math.log(2 * batch - 1))
    )
    maps = same[None, :, None].expand(batch, dim, nodes).clone()
    pool = same.expand(batch, negatives, dim).clone()
    torch.testing.assert_close(
        pixel_rematch_loss(maps, maps, maps, maps, pool), torch.tensor(math.log(1 + negatives))
    )
    torch.testing.assert_close(cycle_attention_loss(maps, maps), torch.tensor(math.log(nodes)))


def test_inputs_are_normalised_by_the_loss():
    c, c_pos = leaves((2, 4, 6), (2, 4, 6), seed=5)
    scale = torch.rand(2, 1, 6, dtype=torch.float64) * 10 + 0.1
    torch.testing.assert_close(
        cycle_attention_loss(c * scale, c_pos), cycle_attention_loss(c, c_pos)
    )
    g, g_pos = leaves((3, 4), (3, 4), seed=6)
    torch.testing.assert_close(global_contrast_loss(7 * g, g_pos), global_contrast_loss(g, g_pos))


def test_rematch_ties_go_to_the_lowest_index():
    p, p_pos, negatives = leaves((1, 3, 4), (1, 3, 4), (1, 2, 3), seed=8)
    flat = torch.ones(1, 2, 4, dtype=torch.float64)  # every affinity equal: sigma(i) = 0 both ways
    ours = pixel_rematch_loss(p, p_pos, flat, flat, negatives, temperature=0.2)

    def info_nce(anchors, positive):  # anchors [D, N] against one positive [D] and the negatives
        a = torch.nn.functional.normalize(anchors, dim=0).T
        keys = torch.nn.functional.normalize(torch.cat([positive[None], negatives[0]]), dim=1)
        return torch.nn.functional.cross_entropy(
            a @ keys.T / 0.2, torch.zeros(a.shape[0], dtype=torch.long)
        )

    expected = 0.5 * (info_nce(p[0], p_pos[0, :, 0]) + info_nce(p_pos[0], p[0, :, 0]))
    torch.testing.assert_close(ours, expected)


def test_single_video_without_negatives_keeps_only_the_positive():
    p, p_pos, u, u_pos = leaves((1, 3, 4), (1, 3, 4), (1, 2, 4), (1, 2, 4), seed=9)
    loss = pixel_rematch_loss(p, p_pos, u, u_pos, None)
    assert loss.item() == 0.0
    loss.backward()
    assert p.grad is not None and torch.all(p.grad == 0)
    assert draw_pixel_negatives(p.detach(), torch.tensor([0]), 5) is None


def test_drawn_negatives_come_from_other_videos_only():
    videos, dim, nodes = 4, 2, 9
    pixels = (
        torch.arange(videos, dtype=torch.float32)[:, None, None].expand(videos, dim, nodes).clone()
    )
    pixels[:, 1] = torch.arange(nodes, dtype=torch.float32)  # channel 1 holds the node id
    owners = torch.tensor([0, 2, 3])
    drawn = draw_pixel_negatives(pixels, owners, 500, generator=torch.Generator().manual_seed(0))
    assert drawn.shape == (3, 500, dim)
    for row, owner in enumerate(owners.tolist()):
        sources = set(drawn[row, :, 0].long().tolist())
        assert owner not in sources and sources == set(range(videos)) - {owner}
        assert set(drawn[row, :, 1].long().tolist()) == set(range(nodes))


def test_cacl_loss_skips_zero_weight_terms_and_sums_the_rest(monkeypatch):
    g, g_pos, p, p_pos, u, u_pos, c, c_pos, negatives = leaves(
        (2, 4),
        (2, 4),
        (2, 4, 5),
        (2, 4, 5),
        (2, 3, 5),
        (2, 3, 5),
        (2, 4, 5),
        (2, 4, 5),
        (2, 6, 4),
        seed=10,
    )
    full, terms = CACLLoss(0.5, 2.0, 3.0)(g, g_pos, p, p_pos, u, u_pos, c, c_pos, negatives)
    expected = 0.5 * terms["global"] + 2.0 * terms["pixel"] + 3.0 * terms["cycle"]
    torch.testing.assert_close(full, expected)
    torch.testing.assert_close(terms["cycle"], cycle_attention_loss(c, c_pos, 0.07))

    def must_not_run(*args, **kwargs):
        raise AssertionError("a term with weight 0 was computed")

    monkeypatch.setattr(cacl, "cycle_attention_loss", must_not_run)
    monkeypatch.setattr(cacl, "pixel_rematch_loss", must_not_run)
    total, terms = CACLLoss(1.0, 0.0, 0.0)(g, g_pos, p, p_pos, u, u_pos, c, c_pos, negatives)
    assert terms["pixel"].item() == 0.0 and terms["cycle"].item() == 0.0
    torch.testing.assert_close(total, terms["global"])
    total, _ = CACLLoss(0.0, 0.0, 0.0)(g, g_pos, p, p_pos, u, u_pos, c, c_pos, negatives)
    total.backward()  # connected even with every term off
    assert torch.all(g.grad == 0)


# ------------------------------------------------------------------ SGD descent


@pytest.mark.parametrize("term", ["global", "pixel", "cycle"])
def test_loss_falls_over_a_few_sgd_steps(term):
    g, g_pos, p, p_pos, u, u_pos, c, c_pos, negatives = leaves(
        (4, 8), (4, 8), (4, 8, 16), (4, 8, 16), (4, 8, 16), (4, 8, 16), (4, 8, 16), (4, 8, 16), (4, 32, 8),
        seed=11, dtype=torch.float32,
    )  # fmt: skip
    weights = {"global": (1.0, 0.0, 0.0), "pixel": (0.0, 1.0, 0.0), "cycle": (0.0, 0.0, 1.0)}[term]
    criterion = CACLLoss(*weights)
    optimizer = torch.optim.SGD([g, g_pos, p, p_pos, c, c_pos], lr=5.0)
    history = []
    for _ in range(8):
        optimizer.zero_grad()
        loss, _ = criterion(g, g_pos, p, p_pos, u, u_pos, c, c_pos, negatives.detach())
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < 0.9 * history[0]


# ---------------------------------------------------------- two gloo processes

BATCH_PER_RANK, DIM, NODES, NEGATIVES = 2, 4, 6, 5


def full_batch(world: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(123)
    total = BATCH_PER_RANK * world
    shapes = {"g": (total, DIM), "g_pos": (total, DIM), "p": (total, DIM, NODES), "p_pos": (total, DIM, NODES),
              "u": (total, 3, NODES), "u_pos": (total, 3, NODES)}  # fmt: skip
    return {
        name: torch.randn(*shape, generator=gen, dtype=torch.float64)
        for name, shape in shapes.items()
    }


def pixel_loss_with_drawn_negatives(tensors, owners, pool):
    """The method's pattern: negatives for each local video drawn from the gathered (detached) pool."""
    generator = torch.Generator().manual_seed(5)
    every_owner = torch.arange(pool.shape[0])
    negatives = draw_pixel_negatives(pool, every_owner, NEGATIVES, generator=generator)[owners]
    return pixel_rematch_loss(
        tensors["p"], tensors["p_pos"], tensors["u"], tensors["u_pos"], negatives
    )


def gathered_cacl_worker(rank: int, world: int) -> dict:
    rows = slice(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
    local = {
        name: tensor[rows].clone().requires_grad_() for name, tensor in full_batch(world).items()
    }
    global_loss = global_contrast_loss(
        all_gather_with_grad(local["g"]), all_gather_with_grad(local["g_pos"])
    )
    pool = all_gather_no_grad(local["p"])
    pixel_loss = pixel_loss_with_drawn_negatives(local, torch.arange(rows.start, rows.stop), pool)
    (global_loss + pixel_loss).backward()
    saved = {"global": global_loss.detach(), "pixel": pixel_loss.detach(), "pool": pool}
    saved.update({f"grad_{name}": local[name].grad for name in ("g", "g_pos", "p", "p_pos")})
    return saved


@pytest.mark.integration
def test_two_rank_gather_matches_single_process(tmp_path):
    ranks = run_gloo_ranks(gathered_cacl_worker, tmp_path)
    world = len(ranks)
    single = {name: tensor.clone().requires_grad_() for name, tensor in full_batch(world).items()}
    global_loss = global_contrast_loss(single["g"], single["g_pos"])
    pixel_loss = pixel_loss_with_drawn_negatives(
        single, torch.arange(single["p"].shape[0]), single["p"].detach()
    )
    (global_loss + pixel_loss).backward()
    torch.testing.assert_close(ranks[0]["pool"], single["p"].detach())
    torch.testing.assert_close(sum(r["global"] for r in ranks) / world, global_loss.detach())
    torch.testing.assert_close(sum(r["pixel"] for r in ranks) / world, pixel_loss.detach())
    for rank, saved in enumerate(ranks):
        rows = slice(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
        for name in ("g", "g_pos", "p", "p_pos"):
            torch.testing.assert_close(saved[f"grad_{name}"] / world, single[name].grad[rows])


def test_losses_compute_in_float32_under_bf16_autocast():
    c, c_pos = leaves((2, 8, 16), (2, 8, 16), seed=12, dtype=torch.float32)
    exact = cycle_attention_loss(c, c_pos)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = cycle_attention_loss(c, c_pos)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, exact)
