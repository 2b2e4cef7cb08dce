"""The multi-view DIM (eval/methods/mvdim.py): DIMHead across views, its views, its positives."""

from __future__ import annotations

import itertools

import pytest
import torch
from PIL import Image

import dim_ssl
from eval.data import dataset_spec
from eval.methods import MultiViewDIM
from eval.methods.mvdim import TranslationViews, random_location

SHAPE = (1, 32, 32)
# Deterministic head (no prior's random samples), small critics.
HEAD = {"estimator": "infonce", "gamma": 0.0, "hidden_dim": 32, "embed_dim": 32}


def make_model(**kwargs) -> MultiViewDIM:
    torch.manual_seed(0)
    encoder = dim_ssl.PaperEncoder(global_dim=16, in_chans=1, hidden_dim=64)
    return MultiViewDIM(encoder, num_classes=10, image_shape=SHAPE, head=HEAD, **kwargs)


def shifted(x: torch.Tensor, pixels: int) -> torch.Tensor:
    return torch.roll(x, shifts=pixels, dims=-1)


def test_the_loss_is_the_heads_mean_over_ordered_view_pairs():
    model = make_model(views=3)
    x = torch.randn(6, *SHAPE)
    views = [x, shifted(x, 2), x.flip(-1)]
    step = model.training_loss(views)
    # By hand, from the same one-pass encoding (BatchNorm statistics over all views).
    encoded = model.encoder.encode(torch.cat(views))
    maps, summaries = encoded.feature_map.chunk(3), encoded.y.chunk(3)
    by_hand = [model.head(maps[a], summaries[b]) for a, b in itertools.permutations(range(3), 2)]
    assert len(by_hand) == 6
    assert step.loss.item() == pytest.approx(torch.stack([o.loss for o in by_hand]).mean().item(), rel=1e-6)
    assert step.terms["local_mi"].item() == pytest.approx(torch.stack([o.local_mi for o in by_hand]).mean().item())
    # Not the same-view objective: the head on (map of a view, its own summary) differs.
    same_view = torch.stack([model.head(maps[a], summaries[a]).loss for a in range(3)]).mean()
    assert abs(same_view.item() - step.loss.item()) > 1e-4


def test_the_positive_is_the_same_image_across_views():
    # Trained on pairs (image, image shifted by 2 pixels), the bound must be lower when the
    # second view of each image is swapped with another image's: the positives are then wrong.
    model = make_model(optimizer={"lr": 1e-3})
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, *SHAPE, generator=generator)
    views = [x, shifted(x, 2)]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(40):
        optimizer.zero_grad()
        model.training_loss(views).loss.backward()
        optimizer.step()
    model.eval()
    swapped = [x, shifted(x, 2)[torch.roll(torch.arange(16), 1)]]
    with torch.no_grad():
        matched_mi = model.training_loss(views).terms["local_mi"].item()
        swapped_mi = model.training_loss(swapped).terms["local_mi"].item()
    assert matched_mi > swapped_mi + 0.5, (matched_mi, swapped_mi)


def test_local_to_local_adds_a_random_location_of_one_view_against_the_others_map():
    model = make_model(local_to_local=0.5)
    x = torch.randn(6, *SHAPE)
    views = [x, shifted(x, 2)]
    torch.manual_seed(3)
    step = model.training_loss(views)
    # By hand: the cross-view loss plus 0.5 times the local head on (map of b, a random location
    # of a), the locations drawn in the same order from the same seed.
    torch.manual_seed(3)
    encoded = model.encoder.encode(torch.cat(views))
    maps, summaries = encoded.feature_map.chunk(2), encoded.y.chunk(2)
    cross = torch.stack([model.head(maps[a], summaries[b]).loss for a, b in [(0, 1), (1, 0)]]).mean()
    local = [model.local_head(maps[b], random_location(maps[a])) for a, b in [(0, 1), (1, 0)]]
    expected = cross + 0.5 * torch.stack([o.loss for o in local]).mean()
    assert step.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert step.terms["local_to_local_mi"].item() == pytest.approx(
        torch.stack([o.local_mi for o in local]).mean().item()
    )
    # The local head's "summary" is a local feature vector: its width is the map's channels,
    # and it scores the local term alone.
    assert model.local_head.alpha == 0 and model.local_head.gamma == 0 and model.local_head.beta == 1
    assert make_model().local_head is None
    with pytest.raises(ValueError, match="local_to_local must be a weight >= 0"):
        make_model(local_to_local=-1.0)


def test_random_location_takes_one_location_of_each_images_own_map():
    n, c, m = 5, 3, 4
    # Every entry says which image and location it is: value = 100 * image + location.
    values = (100 * torch.arange(n).view(n, 1, 1) + torch.arange(m * m).view(1, m, m)).float()
    feature_map = values.unsqueeze(1).expand(n, c, m, m)
    seen = set()
    for _ in range(200):
        picked = random_location(feature_map)
        assert picked.shape == (n, c)
        assert (picked == picked[:, :1]).all()  # one location: all channels agree
        image, location = picked[:, 0].long() // 100, picked[:, 0].long() % 100
        assert torch.equal(image, torch.arange(n))  # each image's own map
        seen.update(location.tolist())
    assert seen == set(range(m * m))  # every location is drawn


def test_views_count_and_refusals():
    model = make_model(views=3)
    assert model.num_views == 3
    x = torch.randn(4, *SHAPE)
    with pytest.raises(ValueError, match="3 views per image"):
        model.training_step(([x, x], torch.zeros(4, dtype=torch.long)), 0)
    with pytest.raises(ValueError, match="at least 2 views"):
        make_model(views=1)


def test_translation_views_move_and_flip_grayscale_images_without_changing_their_values():
    image = Image.fromarray((torch.arange(32 * 32) % 251).view(32, 32).to(torch.uint8).numpy(), mode="L")
    views = TranslationViews(input_size=32, num_views=2, max_shift=4, hf_prob=0.5, colour=False)(image)
    original = set(torch.tensor(list(image.getdata())).tolist())
    assert len(views) == 2
    for view in views:
        assert view.shape == (1, 32, 32)
        # Translation with reflection and flips only move pixels: no new grey levels (no jitter).
        assert set((view * 255).round().long().flatten().tolist()) <= original
    with pytest.raises(ValueError, match="num_views >= 2"):
        TranslationViews(num_views=1)


def test_the_methods_own_transform_gives_its_views_of_a_dataset_image():
    model = make_model(views=3, transform={"max_shift": 2})
    transform = model.train_transform(dataset_spec("digits"), 32, 1)
    image = torch.randint(0, 17, (8, 8), dtype=torch.uint8)
    views = transform(image)
    assert len(views) == 3 and all(v.shape == SHAPE for v in views)
    colour = model.view_options(3)
    assert colour["colour"] is True and colour["max_shift"] == 2 and model.view_options(1)["colour"] is False


def test_simclr_plus_dim_is_ntxent_plus_lam_times_dims_local_term():
    from eval.methods import SimCLRDIM

    torch.manual_seed(0)
    encoder = dim_ssl.PaperEncoder(global_dim=16, in_chans=1, hidden_dim=64)
    model = SimCLRDIM(
        encoder, 10, SHAPE, dim_weight=0.5, hidden_dim=32, output_dim=16, head={"hidden_dim": 32, "embed_dim": 32}
    )
    assert (model.head.alpha, model.head.beta, model.head.prior_matching) == (0.0, 1.0, None)
    assert set(model.feature_positions) == {"conv", "fc", "y", "pool", "proj"}  # y is trained here
    assert all(p.requires_grad for p in encoder.summary_parameters())
    x = torch.randn(8, *SHAPE)
    views = [x, x.flip(-1)]
    step = model.training_loss(views)
    encoded = encoder.encode(torch.cat(views))
    z0, z1 = model.projection_head(encoded.pooled).chunk(2)
    by_hand = model.criterion(z0, z1) + 0.5 * model.head(encoded.feature_map, encoded.y).loss
    assert step.loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert step.terms["ntxent"].item() == pytest.approx(model.criterion(z0, z1).item(), rel=1e-6)
    without = SimCLRDIM(encoder, 10, SHAPE, dim_weight=0.0, hidden_dim=32, output_dim=16)
    without.projection_head.load_state_dict(model.projection_head.state_dict())
    assert without.training_loss(views).loss.item() == pytest.approx(step.terms["ntxent"].item(), rel=1e-6)


def test_moco_plus_dim_is_mocos_loss_plus_lam_times_dims_local_term_on_the_query_pass():
    from eval.methods import MoCo, MoCoDIM

    options = {"hidden_dim": 32, "output_dim": 16, "memory_bank_size": 64}

    def build(method, **extra):
        torch.manual_seed(0)  # the same encoder, heads and queue for both
        encoder = dim_ssl.PaperEncoder(global_dim=16, in_chans=1, hidden_dim=64)
        return method(encoder, 10, SHAPE, **options, **extra)

    moco = build(MoCo)
    model = build(MoCoDIM, dim_weight=0.5, head={"hidden_dim": 32, "embed_dim": 32})
    assert (model.head.alpha, model.head.beta, model.head.prior_matching) == (0.0, 1.0, None)
    assert all(p.requires_grad for p in model.encoder.summary_parameters())  # y is trained here
    assert not any(p.requires_grad for p in model.encoder_momentum.parameters())  # keys: momentum only
    x = torch.randn(8, *SHAPE)
    views = [x, x.flip(-1)]
    for _ in range(2):  # the second step runs against the queue the first one filled
        torch.manual_seed(1)  # MoCo's shuffled-BN draws
        plain = moco.training_loss(views).loss
        torch.manual_seed(1)
        step = model.training_loss(views)
        assert step.terms["moco"].item() == pytest.approx(plain.item(), rel=1e-5)
        encoded = model.encoder.encode(torch.cat(views))  # the query pass, both views
        dim = model.head(encoded.feature_map, encoded.y)
        assert step.loss.item() == pytest.approx(plain.item() + 0.5 * dim.loss.item(), rel=1e-5)
        assert step.terms["local_mi"].item() == pytest.approx(dim.local_mi.item(), rel=1e-5)
    with pytest.raises(ValueError, match="dim_weight must be a weight >= 0"):
        build(MoCoDIM, dim_weight=-1.0)


@pytest.mark.parametrize("kind", ["paper", "timm"])
def test_a_second_scale_scores_another_stages_map_against_the_other_views_summary(kind):
    torch.manual_seed(0)
    if kind == "paper":
        encoder, stage, shape = dim_ssl.PaperEncoder(global_dim=16, in_chans=1, hidden_dim=64), 2, SHAPE
    else:
        encoder = dim_ssl.TimmEncoder("test_resnet", global_dim=16, in_chans=1, hidden_dim=64, input_size=32)
        stage, shape = 1, SHAPE
    model = MultiViewDIM(encoder, num_classes=10, image_shape=shape, head=HEAD, second_stage=stage)
    assert model.second_head.local_channels == encoder.stage_channels(stage)
    x = torch.randn(6, *shape)
    views = [x, shifted(x, 2)]
    step = model.training_loss(views)
    # By hand from one pass: the cross-view loss of the main map plus that of the stage's map.
    encoded, (second,) = encoder.encode_with(torch.cat(views), [stage])
    maps, seconds, summaries = encoded.feature_map.chunk(2), second.chunk(2), encoded.y.chunk(2)
    pairs = [(0, 1), (1, 0)]
    main = torch.stack([model.head(maps[a], summaries[b]).loss for a, b in pairs]).mean()
    scale = [model.second_head(seconds[a], summaries[b]) for a, b in pairs]
    assert step.loss.item() == pytest.approx((main + torch.stack([o.loss for o in scale]).mean()).item(), rel=1e-5)
    assert step.terms["second_scale_mi"].item() == pytest.approx(torch.stack([o.local_mi for o in scale]).mean().item())
    assert second.shape[-1] != encoded.feature_map.shape[-1]  # another scale: another map size


def test_encode_with_gives_the_encodes_tensors_and_refuses_unknown_stages():
    torch.manual_seed(0)
    encoder = dim_ssl.PaperEncoder(global_dim=16, in_chans=1, hidden_dim=64).eval()
    x = torch.randn(3, *SHAPE)
    encoded, maps = encoder.encode_with(x, [0, 1, 2])
    plain = encoder.encode(x)
    assert all(torch.equal(a, b) for a, b in zip(encoded, plain))
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 16, 16), (128, 8, 8), (256, 4, 4)]
    assert torch.equal(maps[1], plain.feature_map)
    with pytest.raises(ValueError, match="conv blocks 0..2; got stage 3"):
        encoder.encode_with(x, [3])
    with pytest.raises(ValueError, match="second_stage needs an encoder with encode_with"):

        class NoStages(dim_ssl.PaperEncoder):
            encode_with = None

        MultiViewDIM(NoStages(global_dim=16, in_chans=1), num_classes=10, image_shape=SHAPE, second_stage=0)
