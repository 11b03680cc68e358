"""The image modality: ViT parameter counts, digits and image-folder data, the loss, and
the example's smoke sweep on a real local Ray."""

import functools
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import default_collate

from flops_fit.flops import count_params
from flops_fit.vision import (DigitsImages, ImageFolder, ViT, ViTConfig, classification_loss,
                              split_indices, vit)
from driver_side import JOBS, load_example


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_param_counts_by_component_match_meta_and_convention(size):
    real = vit(size)
    with torch.device("meta"):
        meta = vit(size)
    assert next(meta.parameters()).is_meta
    counts = real.param_counts()  # also runs the analytic-formula assert
    assert counts == meta.param_counts()
    d = 16 * size  # default aspect
    assert counts["embedding"] == 16 * d  # the position table of 16 patches, nothing else
    # patch embedding (2x2x1 pixels -> d), blocks, final norm, 10-class head
    assert counts["non_embedding"] == 4 * d + size * (12 * d * d + 2 * d) + d + 10 * d
    # the planner's count (flops.count_params) agrees with the model's own
    assert count_params(meta, "non_embedding") == counts["non_embedding"]
    assert count_params(meta, "all") == counts["total"]


def test_known_count_size_2():
    # hand-computed: d = 32; patches 4*32, 2 blocks of 12*32^2 + 64, ln_f 32, head 320
    assert vit(2).param_counts()["non_embedding"] == 128 + 2 * (12 * 1024 + 64) + 32 + 320 == 25_184


def test_one_size_dial_grows_monotonically():
    dial = functools.partial(ViT.from_size, aspect=4, head_dim=4)
    with torch.device("meta"):
        models = [dial(s) for s in range(1, 11)]
    assert [(m.config.n_layer, m.config.n_embd, m.config.n_head) for m in models[:3]] == [(1, 4, 1), (2, 8, 2), (3, 12, 3)]
    n = [m.param_counts()["non_embedding"] for m in models]
    assert all(a < b for a, b in zip(n, n[1:]))


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_from_size_rejects_bad_size(bad):
    with pytest.raises(ValueError, match=r"model_fn\(size=.*\) must be an int >= 1: it is the number of layers"):
        ViT.from_size(bad)


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="head_dim"):
        ViT.from_size(1, aspect=12, head_dim=8)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        ViT(ViTConfig(image_size=8, patch_size=3))
    with pytest.raises(ValueError, match=r"takes \[batch, 1, 8, 8\].*channels=.*image_size="):
        vit(1)(torch.zeros(2, 3, 8, 8))


def test_patches_are_the_tokens():
    model = vit(1)
    images = torch.arange(64.0).view(1, 1, 8, 8)
    patches = model.patchify(images)
    assert patches.shape == (1, 16, 4)
    # row-major patches of 2x2 pixels: the first is pixels (0,0),(0,1),(1,0),(1,1)
    assert patches[0, 0].tolist() == [0.0, 1.0, 8.0, 9.0]
    assert patches[0, 1].tolist() == [2.0, 3.0, 10.0, 11.0]
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)


def test_model_fn_pickles():
    assert pickle.loads(pickle.dumps(vit)) is vit
    partial = functools.partial(ViT.from_size, aspect=4, head_dim=4, channels=3, image_size=16, num_classes=3)
    assert pickle.loads(pickle.dumps(partial))(2).config.channels == 3


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return DigitsImages()()


def test_digits_split_is_deterministic_stratified_and_disjoint(digits):
    train, val = digits
    assert (len(train), len(val)) == (1438, 359)  # 1,797 images, 20 % of each class held out
    image, label = train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32 and label.dtype == torch.int64
    # standardized with the training split's statistics
    assert abs(train.images.mean().item()) < 1e-5 and train.images.std().item() == pytest.approx(1, abs=1e-3)
    again = DigitsImages()()
    assert torch.equal(again[1].images, val.images) and torch.equal(again[1].labels, val.labels)
    other = DigitsImages(seed=1)()
    assert not torch.equal(other[1].labels, val.labels)
    # stratified: every class keeps round(20 %) of its images in validation
    per_class = torch.bincount(torch.cat([train.labels, val.labels]))
    assert torch.bincount(val.labels).tolist() == [round(0.2 * n) for n in per_class.tolist()]
    # no image is in both splits
    train_rows = {tuple(x.flatten().tolist()) for x in train.images}
    val_rows = {tuple(x.flatten().tolist()) for x in val.images}
    assert len(train_rows & val_rows) <= 1  # the digits hold a handful of exact duplicates


def test_digits_factory_is_light_and_picklable():
    factory = pickle.loads(pickle.dumps(DigitsImages(val_fraction=0.1, seed=3)))
    assert (factory.val_fraction, factory.seed, factory.num_classes, factory.image_size) == (0.1, 3, 10, 8)
    assert vars(factory) == {"val_fraction": 0.1, "seed": 3}  # settings only: arrays are built on call
    with pytest.raises(ValueError, match="val_fraction"):
        DigitsImages(val_fraction=1.0)


def test_split_indices_partitions_every_class():
    labels = np.repeat([0, 1, 2], [10, 5, 1])
    train, val = split_indices(labels, 0.2, seed=0)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(16))
    assert np.bincount(labels[val], minlength=3).tolist() == [2, 1, 0]


def test_loss_is_ln10_at_init_and_per_image(digits):
    train, _ = digits
    batch = default_collate([train[i] for i in range(32)])
    for size in (1, 3):
        torch.manual_seed(0)
        loss = classification_loss(vit(size), batch)
        assert loss.dim() == 0
        assert loss.item() == pytest.approx(math.log(10), abs=1e-6)  # zero head: uniform over 10 classes


def test_loss_is_mean_cross_entropy_per_image():
    class Fixed(torch.nn.Module):
        def forward(self, images):
            return torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # p(label) = 3/4 and 1/2
    loss = classification_loss(Fixed(), (torch.zeros(2, 1, 8, 8), torch.tensor([1, 0])))
    assert loss.item() == pytest.approx((-math.log(0.75) - math.log(0.5)) / 2)


def _png_folder(root: Path, classes=("cat", "dog", "eel"), per_class=5, size=(12, 9)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            pixels[..., c] = 255  # each class has its own saturated channel
            suffix = ".png" if i % 2 else ".jpg"
            Image.fromarray(pixels).save(root / name / f"{i}{suffix}")
    (root / "notes.txt").write_text("not an image class")
    (root / "empty").mkdir()  # no images: not a class


def test_image_folder_reads_resizes_and_splits(tmp_path):
    pytest.importorskip("PIL")
    _png_folder(tmp_path / "imgs")
    factory = ImageFolder(tmp_path / "imgs", image_size=8, channels=3, val_fraction=0.4)
    assert factory.classes() == ["cat", "dog", "eel"] and factory.num_classes == 3
    factory = pickle.loads(pickle.dumps(factory))
    train, val = factory()
    assert (len(train), len(val)) == (9, 6)  # 2 of each class's 5 held out
    assert train.images.shape == (9, 3, 8, 8) and val.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert "15 images, 3 classes" in factory.describe()
    # the model built for this data takes it
    model = ViT.from_size(1, aspect=4, head_dim=4, image_size=8, patch_size=4, channels=3, num_classes=3)
    assert classification_loss(model, default_collate([train[i] for i in range(4)])).item() == pytest.approx(math.log(3))
    gray, _ = ImageFolder(tmp_path / "imgs", image_size=4, channels=1, val_fraction=0.4)()
    assert gray.images.shape == (9, 1, 4, 4)


def test_image_folder_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="one subfolder of images per class"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "one" / "only").mkdir(parents=True)
    pytest.importorskip("PIL")
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "one" / "only" / "a.png")
    with pytest.raises(ValueError, match="at least 2 classes"):
        ImageFolder(tmp_path / "one")
    with pytest.raises(ValueError, match=r"ImageFolder\(channels=2\) must be one of \[1, 3\]: 1 \(grayscale\) or 3 \(RGB\)"):
        ImageFolder(tmp_path, channels=2)


def test_vision_module_imports_without_sklearn():
    # scikit-learn is imported inside DigitsImages.__call__, never at import time
    import subprocess

    subprocess.run([sys.executable, str(JOBS / "vision_without_sklearn.py")], check=True)


@pytest.fixture
def images_example():
    return load_example("images")


def test_example_task_counts_patches(images_example, tmp_path):
    pytest.importorskip("sklearn")
    task = images_example.make_task(images_example.parse_args([]))
    assert task.tokens_per_sample == 16 and task.loss_fn is classification_loss
    _png_folder(tmp_path / "imgs")
    args = images_example.parse_args(["--data", str(tmp_path / "imgs"), "--image-size", "16", "--patch-size", "4"])
    task = images_example.make_task(args)
    assert task.tokens_per_sample == 16
    assert task.model_fn(1).config.num_classes == 3 and task.model_fn(1).config.channels == 3
    with pytest.raises(SystemExit, match="--patch-size 3"):
        images_example.make_task(images_example.parse_args(["--patch-size", "3"]))


@pytest.mark.slow
def test_example_trains_the_vit_through_ray(ray_session, images_example, tmp_path, capsys):
    """One budget of the smoke sizes, real training on Ray's workers. One budget cannot be
    fitted: the example prints the table and the reason (the report path is the GPT
    example's, tests/test_job_submit.py)."""
    pytest.importorskip("sklearn")
    code = images_example.main(["--budgets", "1e9", "--sizes", "2", "3", "4", "--storage-path", str(tmp_path),
                                "--name", "vit-one-budget", "--bootstrap", "0"])
    out = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "vit-one-budget" / "results.csv")
    assert len(table) == 3 and (table.status == "ok").all(), table[["point_id", "status", "error"]]
    assert table.loss.between(0, math.log(10) + 0.5).all()  # nats per image, started at ln(10)
    assert (table.tokens % 16 == 0).all()  # whole images of 16 patches
    assert (table.tokens == table.planned_tokens).all()
    # no law from one budget: no answer, so the example's exit status is 1
    assert code == 1 and "too small to fit" in out and "C1e+09-s2" in out, out[-2000:]
