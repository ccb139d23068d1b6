"""The not-a-digit score, its threshold and its AUROC, and the non-digits Outlier Exposure trains on."""

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.not_a_digit import auroc, flagged_percent, flags, ood_scores, threshold_flagging
from training import outliers
from training.data import Mnist
from training.loop import TrainConfig, run


def test_the_score_is_one_minus_the_network_s_own_largest_probability() -> None:
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
    scores = ood_scores(probs.log())
    assert torch.allclose(scores, torch.tensor([0.1, 0.6, 2 / 3], dtype=torch.float64))


@pytest.mark.parametrize("percent", [0.0, 0.75, 1.0, 10.0, 50.0])
def test_the_threshold_flags_at_most_the_share_asked_for_and_no_lower_one_would(percent: float) -> None:
    scores = torch.rand(2000, generator=torch.Generator().manual_seed(3))
    scores[100:140] = scores[99]  # ties at the cut must not let the share grow past the bar
    threshold = threshold_flagging(scores, percent)
    assert flagged_percent(scores, threshold) <= percent
    lower = scores[scores < threshold].max() if bool((scores < threshold).any()) else None
    if lower is not None:  # the next lower score as the threshold would flag more than allowed
        assert flagged_percent(scores, float(lower)) > percent


def test_flags_are_strictly_above_the_threshold_and_none_without_one() -> None:
    scores = torch.tensor([0.25, 0.5, 0.75])
    assert flags(scores, 0.5).tolist() == [False, False, True]
    assert flags(scores, None).tolist() == [False, False, False]
    assert flagged_percent(scores, 0.0) == pytest.approx(100.0)
    # Compared as the numbers a client reads: a float32 score just above a threshold float32
    # cannot hold is above it.
    assert flags(torch.tensor([0.2]), 0.2).tolist() == [float(torch.tensor(0.2)) > 0.2]


def brute_auroc(digits: list[float], others: list[float]) -> float:
    pairs = list(itertools.product(digits, others))
    return sum(1.0 if o > d else 0.5 if o == d else 0.0 for d, o in pairs) / len(pairs)


def test_auroc_is_the_share_of_pairs_a_non_digit_wins_with_ties_counting_half() -> None:
    generator = torch.Generator().manual_seed(5)
    digits = (torch.rand(60, generator=generator) * 10).round() / 10
    others = (torch.rand(45, generator=generator) * 10).round() / 10 + 0.2
    assert auroc(digits, others) == pytest.approx(brute_auroc(digits.tolist(), others.tolist()), abs=1e-12)
    assert auroc(torch.zeros(3), torch.ones(4)) == 1.0
    assert auroc(torch.ones(3), torch.zeros(4)) == 0.0
    assert auroc(torch.ones(3), torch.ones(4)) == 0.5


def test_each_family_draws_the_same_non_digits_from_the_same_seed_and_frames_them(mnist: Mnist) -> None:
    digits = mnist.train_images[:100]
    for family in outliers.FAMILIES:
        first = outliers.drawn(family, 12, 7, digits)
        assert first.shape == (12, 28, 28) and first.dtype == torch.uint8
        assert torch.equal(first, outliers.drawn(family, 12, 7, digits)), family
        assert not torch.equal(first, outliers.drawn(family, 12, 8, digits)), family
        ink = first[(first.flatten(1) > 0).any(dim=1)].float()
        assert len(ink) >= 10, family  # blank ones are rare
        # framed as an upload: light ink on black, its mass near the centre of the frame
        ys = torch.arange(28.0).view(1, 28, 1)
        centre = (ink * ys).sum(dim=(1, 2)) / ink.sum(dim=(1, 2))
        assert float((centre - 13.5).abs().max()) < 3, family
    with pytest.raises(ValueError, match="unknown outlier family 'faces'"):
        outliers.drawn("faces", 1, 0, digits)


def test_typefaces_come_from_the_pinned_packages_in_many_faces_and_none_the_benchmark_holds_out() -> None:
    faces = outliers.typeface_files()
    assert len(faces) == 39 and len({Path(face).name for face in faces}) == 39
    # bench/not_a_digit.py measures letters in DejaVu's faces as fonts no training run draws in.
    assert not any("dejavu" in face.lower() for face in faces)
    styles = {Path(face).stem.split("-")[-1] for face in faces}
    assert {"Regular", "Bold", "Italic", "Light"} <= styles
    # ... nor any of the 61 other faces it holds out.
    held_out = ("Liberation", "Free", "Nimbus", "URW", "C059", "P052", "Z003", "D050000L")
    assert not any(name in Path(face).name for face in faces for name in held_out)


def test_pen_letters_come_from_hersheys_hands_but_not_the_one_the_benchmark_holds_out() -> None:
    # bench/not_a_digit.py measures letters in the cursive hand as a hand no training run draws in.
    assert "cursive" not in outliers.PEN_HANDS
    assert not any(name.startswith("cyril") for name in outliers.PEN_HANDS)  # its Ze is a 3
    for name in outliers.PEN_HANDS:
        strokes = outliers.hand(name)
        drawn = [char for char in outliers.PEN_CHARACTERS if any(strokes[char])]
        assert len(drawn) >= len(outliers.PEN_CHARACTERS) // 3, name  # symbol sets draw fewer


def test_a_missing_font_package_is_named_before_anything_trains(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outliers.typeface_files.cache_clear()
    monkeypatch.setattr(outliers, "TYPEFACE_PACKAGES", (*outliers.TYPEFACE_PACKAGES, "font_nowhere"))
    try:
        config = TrainConfig(recipe="tutorial", data_dir=str(mnist_dir), out=str(tmp_path / "m.pt"))
        reported: list[object] = []
        with pytest.raises(outliers.MissingTypefaces, match=r"font_nowhere .*pip install -e \."):
            run(config, reported.append)
        assert reported == [] and not (tmp_path / "m.pt").exists()  # not one step was trained
    finally:
        outliers.typeface_files.cache_clear()


def test_a_missing_pen_font_package_is_named_before_anything_trains(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outliers.hand.cache_clear()
    monkeypatch.setitem(sys.modules, "HersheyFonts", None)  # as if it were not installed
    try:
        config = TrainConfig(recipe="tutorial", data_dir=str(mnist_dir), out=str(tmp_path / "m.pt"))
        reported: list[object] = []
        with pytest.raises(outliers.MissingTypefaces, match=r"Hershey-Fonts .*pip install -e \."):
            run(config, reported.append)
        assert reported == [] and not (tmp_path / "m.pt").exists()
    finally:
        outliers.hand.cache_clear()


def test_each_family_keeps_its_own_stream_when_families_are_added() -> None:
    assert set(outliers.STREAMS) == set(outliers.FAMILIES)
    assert len(set(outliers.STREAMS.values())) == len(outliers.STREAMS)


def test_a_pool_mixes_every_family_and_leaves_blanks_out(mnist: Mnist) -> None:
    pool = outliers.pool(outliers.FAMILIES, 70, 1, mnist.train_images[:100])
    assert len(pool) <= 70 and len(pool) >= 60
    assert bool((pool.flatten(1) > 0).any(dim=1).all())
    assert len(outliers.pool((), 10, 1, mnist.train_images[:10])) == 0
    assert np.array_equal(
        pool.numpy(), outliers.pool(outliers.FAMILIES, 70, 1, mnist.train_images[:100]).numpy()
    )
