"""A second modality: image classification with a small vision transformer (ViT).

What the scaling law counts here (the definitions are explicit because they are not
the text ones):

- a *token* is one image patch: `tokens_per_sample` = patches per image, so D in the law
  is images seen x patches per image (Dosovitskiy et al. 2021 feed patches to the
  transformer as text models feed tokens; Zhai et al. 2022 scale ViTs the same way);
- the *loss* is the cross-entropy of the image's label, in nats, averaged over images:
  one prediction per image, not one per patch. It is a loss per image, not per token.

Pieces, as in models.py and data.py:
- ViT / ViTConfig / ViT.from_size: one size dial (n_layer = size, n_embd = aspect * size),
  parameters counted by component with a consistency assert, buildable on the meta device;
- vit(size): the default model_fn for the digits (module-level, so it pickles);
- classification_loss(model, batch): mean cross-entropy per image, nats;
- DigitsImages: scikit-learn's 1,797 8x8 handwritten digits (shipped inside the sklearn
  package, nothing downloaded); ImageFolder: a folder with one subfolder of images per
  class; HFImages: a Hugging Face `datasets` image dataset saved on local disk. All are
  picklable factories: they hold settings, and each worker decodes the
  images itself when it calls one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from flops_fit import checks
from flops_fit.data import absolute, hf_dataset_folder, keep_settings, load_hf_dataset, settings_repr
from flops_fit.models import Block, block_params, init_gpt2_, param_counts, size_dial

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})  # what ImageFolder reads (Pillow)
DIGITS_SIZE = 8  # sklearn's digits are 8x8 pixels
DIGITS_CLASSES = 10  # digits 0-9
DIGITS_MAX = 16.0  # sklearn's digits are 4-bit intensities 0..16
PIXEL_MAX = 255.0  # 8-bit images
_STD_FLOOR = 1e-6  # a constant channel is not divided by zero when standardizing


@dataclass
class ViTConfig:
    image_size: int = 8  # pixels per side; images are square
    patch_size: int = 2  # pixels per patch side; image_size must be a multiple of it
    channels: int = 1  # 1 = grayscale, 3 = RGB
    num_classes: int = 10  # classes of the head
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads; n_embd must be divisible by n_head
    n_embd: int = 64  # residual stream width (model dimension d)

    @property
    def num_patches(self) -> int:
        """Patches per image: the image's tokens."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        """Pixel values per patch: the patch embedding's input width."""
        return self.channels * self.patch_size**2


class ViT(nn.Module):
    """Patches -> linear embedding + learned positions -> pre-norm blocks -> mean pool -> classes.

    Mean pooling instead of a CLS token (Zhai et al. 2022 find them equal in quality): no
    extra token, so every token the law counts is a patch.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        if config.image_size % config.patch_size != 0:
            raise ValueError(
                f"image_size={config.image_size} is not a multiple of patch_size={config.patch_size}; "
                "resize the images (ImageFolder(image_size=...)) or pick a patch size that divides it"
            )
        self.config = config
        # a patch is flattened (unfold) and projected: a matmul on every patch, so it is
        # counted in N like the GPT's lm_head
        self.patch_embed = nn.Linear(config.patch_dim, config.n_embd, bias=False)
        # a lookup table like the GPT's wpe: an nn.Embedding, so the non_embedding
        # convention leaves it out of N (it costs no FLOPs per token)
        self.pos_embed = nn.Embedding(config.num_patches, config.n_embd)
        # the GPT's blocks without the causal mask: every patch sees every other
        self.blocks = nn.ModuleList(Block(config.n_embd, config.n_head, causal=False)
                                    for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=False)
        self.head = nn.Linear(config.n_embd, config.num_classes, bias=False)
        # GPT-2 init as in models.GPT, and a zero head (Dosovitskiy et al. 2021): every
        # model starts at exactly ln(num_classes), so points differ only in what they learn
        init_gpt2_(self, config.n_layer)
        nn.init.zeros_(self.head.weight)

    @classmethod
    def from_size(
        cls,
        size: int,
        *,
        aspect: int = 16,  # n_embd per layer, as models.GPT.from_size
        head_dim: int = 16,  # channels per attention head
        image_size: int = DIGITS_SIZE,
        patch_size: int = 2,  # 8x8 digits -> 16 patches of 2x2 pixels
        channels: int = 1,
        num_classes: int = DIGITS_CLASSES,
    ) -> "ViT":
        """One size dial: n_layer = size, n_embd = aspect * size, n_head = n_embd // head_dim."""
        n_layer, n_head, n_embd = size_dial(size, aspect, head_dim)
        return cls(ViTConfig(image_size=image_size, patch_size=patch_size, channels=channels,
                             num_classes=num_classes, n_layer=n_layer, n_head=n_head, n_embd=n_embd))

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """images: [B, C, H, W] -> patches: [B, num_patches, C * patch_size^2], row-major."""
        c = self.config
        if images.dim() != 4 or tuple(images.shape[1:]) != (c.channels, c.image_size, c.image_size):
            raise ValueError(
                f"images of shape {tuple(images.shape)}; this model takes [batch, {c.channels}, "
                f"{c.image_size}, {c.image_size}]: build it with the data's channels and image_size "
                "(ViT.from_size(size, channels=..., image_size=...))"
            )
        return F.unfold(images, kernel_size=c.patch_size, stride=c.patch_size).transpose(1, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: float [B, C, H, W] -> logits: [B, num_classes]."""
        x = self.patch_embed(self.patchify(images))
        x = x + self.pos_embed(torch.arange(x.size(1), device=x.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x).mean(dim=1))

    def param_counts(self) -> dict:
        """Parameters by convention: {'embedding', 'non_embedding', 'total'}.

        'embedding' is the position table (the only nn.Embedding); the patch embedding and
        the head are matmuls on every patch / image and are counted in 'non_embedding'.
        """
        c = self.config
        d = c.n_embd
        return param_counts(
            self,
            analytic_embedding=c.num_patches * d,  # pos_embed
            analytic_non_embedding=c.patch_dim * d + c.n_layer * block_params(d) + d + d * c.num_classes,
        )


def vit(size: int) -> ViT:
    """Default model_fn for DigitsImages: ViT.from_size(size) on 8x8 grayscale, 2x2 patches, 10 classes.

    Module-level so it pickles to Ray workers. For other data pass e.g.
    functools.partial(ViT.from_size, image_size=32, patch_size=4, channels=3, num_classes=7).
    """
    return ViT.from_size(size)


def classification_loss(model, batch) -> torch.Tensor:
    """Mean cross-entropy of the label in nats per *image* (one prediction per image).

    batch: (images float [B, C, H, W], labels long [B]), as the default collate makes of
    ImageDataset samples. The scaling law's D counts patches (tokens_per_sample = patches
    per image); its L is this per-image loss.
    """
    images, labels = batch
    logits = model(images)
    # float32 for the softmax even under bf16 autocast: the loss is the measured result
    return F.cross_entropy(logits.float(), labels)


# --- data --------------------------------------------------------------------------------


class ImageDataset(torch.utils.data.Dataset):
    """In-memory images and labels; a sample is (image float [C, H, W], label long)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels):
            raise ValueError(f"images must be [n, C, H, W] and labels [n]; got {tuple(images.shape)} "
                             f"and {tuple(labels.shape)}")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


def split_indices(labels: np.ndarray, val_fraction: float, seed: int) -> tuple:
    """(train, validation) indices, stratified: round(val_fraction * n_c) of every class c
    goes to validation, chosen by a generator seeded with `seed`, so the split is the same
    on every worker and every run, and every class is in both splits."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(val_fraction * len(idx)))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _datasets(images: np.ndarray, labels: np.ndarray, val_fraction: float, seed: int, what: str) -> tuple:
    """Split, standardize with the training split's per-channel mean and std, wrap."""
    train, val = split_indices(labels, val_fraction, seed)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"{what}: {len(labels)} images give {len(train)} training and {len(val)} "
                         "validation images; add images or change val_fraction")
    mean = images[train].mean(axis=(0, 2, 3), keepdims=True)
    std = np.maximum(images[train].std(axis=(0, 2, 3), keepdims=True), _STD_FLOOR)
    x = torch.from_numpy(((images - mean) / std).astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    return ImageDataset(x[train], y[train]), ImageDataset(x[val], y[val])


def _check_image_settings(call: str, image_size, channels: int, val_fraction: float) -> None:
    """The settings every image reader shares, checked before any image is read."""
    checks.one_of(channels, call, "channels", (1, 3), "1 (grayscale) or 3 (RGB)")
    checks.integer(image_size, call, "image_size", "pixels per side")
    _check_fraction(call, val_fraction)


def _check_fraction(call: str, val_fraction):
    checks.fraction(val_fraction, call, "val_fraction", "the held-out share of each class", open_low=True,
               open_high=True)


class DigitsImages:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes, one channel).

    The images ship inside the scikit-learn package (`sklearn.datasets.load_digits`), so
    nothing is downloaded. A stratified val_fraction of each class is held out, chosen by
    `seed`. scikit-learn is imported only when the factory is called (on the workers).
    """

    image_size = DIGITS_SIZE
    channels = 1
    num_classes = DIGITS_CLASSES

    def __init__(self, val_fraction: float = 0.2, seed: int = 0):
        _check_fraction("DigitsImages", val_fraction)
        self.val_fraction = val_fraction
        self.seed = seed

    def __call__(self) -> tuple:
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:
            raise ImportError("DigitsImages needs scikit-learn: pip install scikit-learn") from e
        digits = load_digits()
        images = (digits.images / DIGITS_MAX)[:, None, :, :]  # [n, 1, 8, 8] in [0, 1]
        return _datasets(images, digits.target, self.val_fraction, self.seed, "DigitsImages")

    def describe(self) -> str:
        n_val = round(1797 * self.val_fraction)
        return (f"DigitsImages: scikit-learn's 8x8 handwritten digits, 1,797 images, 10 classes, "
                f"about {1797 - n_val} train / {n_val} validation (stratified, seed {self.seed})")

    def __repr__(self) -> str:
        return settings_repr(self, val_fraction=self.val_fraction, seed=self.seed)


def _image_settings_text(source) -> str:
    """How an image reader converts and splits, for its describe()."""
    side = f"{source.image_size}x{source.image_size}"
    return (f"{'RGB' if source.channels == 3 else 'grayscale'} {side}, "
            f"validation {source.val_fraction:.0%} (stratified, seed {source.seed})")


def _pixels(im, channels: int, image_size: int) -> np.ndarray:
    """A Pillow image -> float32 [H, W, C] in [0, 1], converted to RGB or grayscale and
    resized to image_size x image_size (aspect ratio not kept)."""
    from PIL import Image

    im = im.convert("RGB" if channels == 3 else "L").resize((image_size, image_size), Image.BILINEAR)
    return (np.asarray(im, dtype=np.float32) / PIXEL_MAX).reshape(image_size, image_size, channels)


class ImageFolder:
    """Images in `path/<class name>/*.png|jpg|jpeg`, one subfolder per class.

    Every image is read with Pillow, converted to RGB (channels=3) or grayscale
    (channels=1) and resized to image_size x image_size (aspect ratio not kept). Class
    ids follow the sorted subfolder names. The images are decoded into memory on each
    worker when the factory is called: fine for the thousands of small images a CPU or
    single-node sweep uses; for millions, write a map-style dataset that reads lazily.
    """

    def __init__(self, path, *, image_size: int = 32, channels: int = 3, val_fraction: float = 0.2,
                 seed: int = 0):
        path = Path(absolute(path))
        if not path.is_dir():
            raise FileNotFoundError(f"ImageFolder: {path} is not a folder; give a folder with one "
                                    "subfolder of images per class")
        _check_image_settings("ImageFolder", image_size, channels, val_fraction)
        keep_settings(self, path=str(path), image_size=image_size, channels=channels, val_fraction=val_fraction,
                      seed=seed)
        self.num_classes = len(self.classes())  # fails here, not on a worker, if there are none

    def classes(self) -> list:
        """Class names: the subfolders holding at least one image, sorted."""
        names = sorted(d.name for d in Path(self.path).iterdir()
                       if d.is_dir() and not d.name.startswith(".") and self._files(d))
        if len(names) < 2:
            raise ValueError(f"ImageFolder: {self.path} has {len(names)} subfolder(s) with "
                             f"{sorted(IMAGE_SUFFIXES)} images; a classifier needs at least 2 classes, "
                             "one subfolder per class")
        return names

    @staticmethod
    def _files(folder: Path) -> list:
        return sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())

    def __call__(self) -> tuple:
        try:
            from PIL import Image
        except ImportError as e:
            raise ImportError("ImageFolder reads images with Pillow: pip install pillow") from e
        images, labels = [], []
        for label, name in enumerate(self.classes()):
            for f in self._files(Path(self.path, name)):
                with Image.open(f) as im:
                    images.append(_pixels(im, self.channels, self.image_size))
                labels.append(label)
        x = np.stack(images).transpose(0, 3, 1, 2)  # [n, C, H, W]
        return _datasets(x, np.asarray(labels), self.val_fraction, self.seed, f"ImageFolder({self.path})")

    def describe(self) -> str:
        counts = {name: len(self._files(Path(self.path, name))) for name in self.classes()}
        return (f"ImageFolder({self.path}): {sum(counts.values()):,} images, {len(counts)} classes "
                f"({', '.join(f'{k} {v}' for k, v in counts.items())}), {_image_settings_text(self)}")

    def __repr__(self) -> str:
        return settings_repr(self, self.path, image_size=self.image_size, channels=self.channels,
                             val_fraction=self.val_fraction, seed=self.seed)


class HFImages:
    """An image-classification Hugging Face `datasets` dataset on local disk, read with
    `datasets.load_from_disk` (what `save_to_disk` wrote); nothing is downloaded.

    Rows of `split` (or the dataset itself if it has no splits) give an image column
    (Pillow images, as the `datasets.Image` feature decodes them) and an integer label
    column; images are converted and resized as ImageFolder does, and a stratified
    val_fraction of each class is held out, chosen by `seed`. num_classes comes from the
    label column's ClassLabel names, else from the largest label + 1.
    """

    def __init__(self, path, *, split: str = "train", image_column: str = "image", label_column: str = "label",
                 image_size: int = 32, channels: int = 3, val_fraction: float = 0.2, seed: int = 0):
        path = hf_dataset_folder(path, "HFImages")
        _check_image_settings("HFImages", image_size, channels, val_fraction)
        keep_settings(self, path=path, split=split, image_column=image_column, label_column=label_column,
                      image_size=image_size, channels=channels, val_fraction=val_fraction, seed=seed)
        ds = self._dataset()  # fails here, not on a worker, if split or columns are wrong
        names = getattr(ds.features[label_column], "names", None)
        self.num_classes = len(names) if names else int(max(ds[label_column])) + 1

    def _dataset(self):
        ds = load_hf_dataset(self.path, "HFImages")
        if isinstance(ds, dict):  # a DatasetDict: its splits
            if self.split not in ds:
                raise ValueError(f"HFImages({self.path}) has splits {sorted(ds)}, not {self.split!r}; set split=")
            ds = ds[self.split]
        missing = [c for c in (self.image_column, self.label_column) if c not in ds.column_names]
        if missing:
            raise ValueError(f"HFImages({self.path}) has columns {ds.column_names}, not {missing}; "
                             "set image_column= / label_column=")
        return ds

    def __call__(self) -> tuple:
        ds = self._dataset()
        images = np.stack([_pixels(im, self.channels, self.image_size) for im in ds[self.image_column]])
        labels = np.asarray(ds[self.label_column], dtype=np.int64)
        return _datasets(images.transpose(0, 3, 1, 2), labels, self.val_fraction, self.seed, f"HFImages({self.path})")

    def describe(self) -> str:
        return (f"HFImages({self.path}, split {self.split!r}): {len(self._dataset()):,} images, "
                f"{self.num_classes} classes, {_image_settings_text(self)}")

    def __repr__(self) -> str:
        return settings_repr(self, self.path, split=self.split, image_column=self.image_column,
                             label_column=self.label_column, image_size=self.image_size, channels=self.channels,
                             val_fraction=self.val_fraction, seed=self.seed)


__all__ = ["ViT", "ViTConfig", "vit", "classification_loss", "ImageDataset", "DigitsImages",
           "ImageFolder", "HFImages", "split_indices"]
