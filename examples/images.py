"""A second modality: an IsoFLOP sweep of a small vision transformer on images.

    python examples/images.py                     # local Ray, CPU
    python examples/images.py --smoke             # a short check that all works
    python examples/images.py --data my_images/ --image-size 32 --patch-size 4   # your images

The same plan -> run on Ray -> fit -> report path as examples/sweep.py, with what the law
counts made explicit (flops_fit/vision.py):
- D counts *patches* seen: tokens_per_sample = patches per image, D = images x patches;
- the loss is the cross-entropy of the image's label in nats per *image*.

Data: scikit-learn's 8x8 handwritten digits (1,797 images, shipped inside the package,
nothing downloaded), or --data: a folder with one subfolder of PNG/JPEG images per class,
or a Hugging Face image dataset saved with `save_to_disk` (columns "image" and "label").
Running the same --name again resumes the sweep: finished points are kept.
"""

from __future__ import annotations

import argparse
import functools

import flops_fit as ff
from flops_fit.data import is_hf_dataset
from flops_fit.vision import DigitsImages, HFImages, ImageFolder, ViT, classification_loss
# the flags, planning, running and report every sweep script shares: the report fits,
# prints and writes the same answer for any modality
from flops_fit.sweep_script import (add_plan_arguments, add_run_arguments, exit_status, finish_args,
                                    learning_rate, plan_and_run, report, run_settings)

# Defaults sized for a 2-core laptop CPU: ViTs of ~1.7k-40k parameters on the digits.
# The dial is n_layer = size, n_embd = ASPECT * size; at each budget, sizes are centred on
# a prior optimum so that the IsoFLOP valley is bracketed.
BUDGETS = [3e9, 1e10, 3e10]  # FLOPs
POINTS_PER_BUDGET = 3  # with 4, a noisy largest size at 3e10 left that budget unbracketed (calibration run)
# Prior D/N at the optimum (patches per parameter), for centring the sizes. Measured on
# the digits with the in-process loop: the optimum lies at many epochs of a small model.
TOKENS_PER_PARAM = 150
ASPECT = 4  # model width per layer; 4 keeps the small end of the dial finely spaced in N
HEAD_DIM = 4  # attention head width
PATCH_SIZE = 2  # pixels per patch side: 8x8 digits -> 16 patches (tokens) per image
IMAGE_SIZE = 32  # pixels per side that --data images are resized to
CHANNELS = 3  # --data images as RGB (1: grayscale)
BATCH_SIZE = 8  # images per optimizer step, over all workers: small, so the larger models get enough steps
LR = 2e-2  # peak AdamW learning rate: at 1e10 FLOPs, 1e-2 left sizes 3-4 at 3x the loss of 2e-2
DIGITS_VAL_IMAGES = 359  # the digits' held-out split; a --data folder with fewer uses all of its own
SMOKE = dict(budgets=[5e8, 1e9, 2e9], sizes=[2, 3, 4])  # 9 short points, about 3,900 steps in all


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plan_arguments(p, BUDGETS, POINTS_PER_BUDGET, TOKENS_PER_PARAM, per="patches")
    p.add_argument("--aspect", type=int, default=ASPECT, help="ViT width per layer")
    p.add_argument("--patch-size", type=int, default=PATCH_SIZE, help="pixels per patch side")
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE,
                   help="with --data: pixels per side the images are resized to")
    p.add_argument("--channels", type=int, choices=(1, 3), default=CHANNELS,
                   help="with --data: 3 = RGB, 1 = grayscale")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="global batch, images")
    p.add_argument("--lr", type=float, default=LR, help="peak learning rate")
    p.add_argument("--data", default=None,
                   help="a folder with one subfolder of PNG/JPEG images per class, or a Hugging "
                        "Face dataset folder (save_to_disk; columns image, label) "
                        "(default: scikit-learn's 8x8 digits)")
    add_run_arguments(p)
    return finish_args(p, argv, SMOKE, names=("vit-smoke", "vit-dry-run", "vit-digits"))


def make_data(args):
    """--data folder -> ImageFolder (resized, RGB or grayscale), or HFImages when the folder
    is a Hugging Face dataset saved with save_to_disk; none -> the sklearn digits."""
    if args.data is None:
        return DigitsImages()
    if is_hf_dataset(args.data):
        return HFImages(args.data, image_size=args.image_size, channels=args.channels)
    return ImageFolder(args.data, image_size=args.image_size, channels=args.channels)


def make_task(args) -> ff.Task:
    data = make_data(args)
    if data.image_size % args.patch_size:
        raise SystemExit(f"--patch-size {args.patch_size} does not divide the {data.image_size}-pixel "
                         "images; pick a divisor (or --image-size a multiple of it)")
    patches = (data.image_size // args.patch_size) ** 2
    return ff.Task(
        # partial of a module-level function: picklable, so Ray ships it to the workers
        model_fn=functools.partial(ViT.from_size, aspect=args.aspect, head_dim=HEAD_DIM,
                                   image_size=data.image_size, patch_size=args.patch_size,
                                   channels=data.channels, num_classes=data.num_classes),
        data=data,
        loss_fn=classification_loss,  # nats per image
        tokens_per_sample=patches,  # the law's D counts patches
        batch_size=args.batch_size,
        lr=learning_rate(args),  # --lr, or the rule fitted to an LR-searched sweep (--lr-rule)
        # every point is scored on the same held-out images: all of the digits' 20 %
        eval_samples=DIGITS_VAL_IMAGES,
        **run_settings(args),
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    task = make_task(args)
    print(task.data.describe())
    results = plan_and_run(task, args)
    return exit_status(results, report(results, args, loss_unit="nats/image"))


if __name__ == "__main__":
    raise SystemExit(main())
