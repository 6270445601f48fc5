"""What `hpdm eval report` measures on `shapes` videos beyond FVD: the shipped class classifier, the
colour-blind shape classifier (are generated outlines recognisable?) and object persistence
(does the object stay in every frame?)."""

import json

import pytest
import torch

from hpdm.cli import main
from hpdm.data.shapes import CLASS_COLOURS, NUM_CLASSES, sample_params
from hpdm.metrics.classifier import _clips, class_accuracy, load_classifier
from hpdm.metrics.objects import object_areas, persistence


@pytest.fixture(scope="module")
def held_out():
    """Held-out clips (indices no classifier trained on) as rendered and repainted at random."""
    idx = range(30_000_000, 30_000_128)
    return _clips(idx, (16, 64, 64), 7, "class"), _clips(idx, (16, 64, 64), 7, "shape")


def test_shape_clips_repaint_only_the_shape(held_out):
    (real, labels), (shape, shape_labels) = held_out
    assert torch.equal(labels, shape_labels) and labels.unique().numel() > 4
    changed = (real - shape).abs().amax(dim=1) > 0.02  # (B, F, H, W): where the two differ
    # only pixels of the object change; most of every frame is the untouched background
    assert changed.float().mean() < 0.25
    # the repainted colour is independent of the class: many clips carry another class's colour
    colours = torch.tensor(CLASS_COLOURS) * 2 - 1
    centre = [
        shape[i, :, :, changed[i].any(0)].mean(-1).mean(-1) for i in range(len(shape)) if changed[i].any()
    ]
    nearest = torch.stack([(colours - c).norm(dim=1).argmin() for c in centre])
    assert nearest.unique().numel() > NUM_CLASSES // 2


def test_shipped_classifiers(held_out):
    (real, labels), (shape, _) = held_out
    clf, shape_clf = load_classifier(), load_classifier(kind="shape")
    assert class_accuracy(clf, real, labels) >= 0.95
    # the colour-blind one names the shape whatever its colour (chance is 12.5%); the class one
    # leans on colour, so repainting fools it
    assert class_accuracy(shape_clf, shape, labels) >= 0.95
    assert class_accuracy(shape_clf, real, labels) >= 0.95
    assert class_accuracy(clf, shape, labels) + 0.08 < class_accuracy(shape_clf, shape, labels)


def test_train_classifier_cli(tmp_path, capsys):
    assert main(["eval", "train-classifier", "--kind", "shape", "--steps", "2", "--out", str(tmp_path)]) == 0
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["kind"] == "shape" and "--kind shape" in info["command"]
    assert load_classifier(tmp_path / "model.safetensors", kind="shape").head.out_features == NUM_CLASSES
    with pytest.raises(ValueError, match="not one of class, shape"):
        load_classifier(kind="colour")


def test_train_classifier_shape_size(tmp_path):
    """`--shape-size` trains (and scores) on objects of that radius range, for models trained with
    another `data.shape_size`; the range is recorded with the weights."""
    args = ["eval", "train-classifier", "--kind", "shape", "--steps", "2", "--out", str(tmp_path)]
    assert main([*args, "--shape-size", "0.25", "0.3"]) == 0
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["shape_size"] == [0.25, 0.3] and "--shape-size 0.25 0.3" in info["command"]
    small, _ = _clips(range(64), (2, 32, 32), 0, "class")
    large, _ = _clips(range(64), (2, 32, 32), 0, "class", (0.25, 0.3))
    labels = sample_params(range(64), 0)["class_id"]
    assert object_areas(large, labels).mean() > 1.5 * object_areas(small, labels).mean()


def test_object_persistence(held_out):
    (real, labels), _ = held_out
    areas = object_areas(real, labels)
    assert areas.shape == (128, 16)
    assert persistence(areas) == 1.0  # real objects never leave the frame
    assert 0.02 < float(areas.mean()) < 0.3
    # the object gone from 3 of 16 frames (painted over with a flat background colour)
    gone = real.clone()
    gone[:, :, 5:8] = -0.2
    assert persistence(object_areas(gone, labels)) == pytest.approx(13 / 16)
    # the wrong class's colour is no object at all
    assert persistence(object_areas(real, (labels + 1) % NUM_CLASSES)) < 0.1
    with pytest.raises(ValueError, match="labels must be shapes classes"):
        object_areas(real, labels + NUM_CLASSES)


def test_object_counts_find_one_object_per_real_frame_and_two_side_by_side():
    """Real clips show one object in every frame (a ring's hole keeps it one region); two clips
    side by side show two; a speck below min_area does not count."""
    from hpdm.data.shapes import render_shapes
    from hpdm.metrics.objects import object_counts

    video, labels, _ = render_shapes(torch.arange(8), 8, 64, 64)
    assert torch.all(object_counts(video, labels) == 1)
    assert torch.all(object_counts(torch.cat([video, video], dim=-1), labels) == 2)
    from hpdm.data.shapes import CLASS_COLOURS

    blank = torch.full_like(video, -1.0)
    assert torch.all(object_counts(blank, labels) == 0)
    colour = torch.tensor(CLASS_COLOURS)[labels] * 2 - 1  # (B, 3) in [-1, 1]
    blank[..., 5:7, 5:7] = colour[:, :, None, None, None]  # 4 pixels: below 0.2 % of 64x64
    blank[..., 30:40, 30:40] = colour[:, :, None, None, None]  # 100 pixels: an object
    assert torch.all(object_counts(blank, labels) == 1)
