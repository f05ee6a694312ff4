"""Train LeNet (cnnkernels.models.lenet) on scikit-learn's handwritten digits,
then the same run with its torch.nn twin, and print both side by side.

    python examples/train_digits.py                 # full run, ours then torch.nn
    python examples/train_digits.py --quick         # a short run (used by the tests)
    python examples/train_digits.py --no-torch      # ours only

The data: sklearn.datasets.load_digits (1797 8x8 grey images, bundled with
scikit-learn, no download), split 80/20, stratified, with random_state = --seed (default 0).
Once, at load time, pixels are scaled to [0, 1], the images resized to
LeNet's classic 28x28 with bilinear interpolation (LeNet's two 5x5 convs and
two 2x2 pools need at least 12x12, so it cannot run on the 8x8 originals) and
standardised with the training set's mean and std. Training: Adam with a
one-cycle learning rate, each minibatch shifted by up to 2 pixels (padding
with the background value). Both runs start from the same weights (the twin
loads our state_dict), see the same batches and shifts, and run in float32 on
the CPU. The times are the training loops (with a test pass per epoch).
main(argv) returns the results as a dict.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

import cnnkernels.models as models


def load_data(image_size=28, seed=0, test_size=0.2):
    """(x_train, y_train, x_test, y_test): float32 images (N, 1, S, S),
    standardised with the training set's statistics, and int64 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    y = torch.tensor(digits.target, dtype=torch.int64)
    i_train, i_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_size, random_state=seed, stratify=digits.target)
    i_train, i_test = torch.from_numpy(i_train), torch.from_numpy(i_test)
    mean, std = x[i_train].mean(), x[i_train].std()
    x = (x - mean) / std
    return x[i_train], y[i_train], x[i_test], y[i_test]


def shift(x, dy, dx, pad, fill):
    """x moved by (dy - pad, dx - pad) pixels, the uncovered border set to fill."""
    h, w = x.shape[-2:]
    return F.pad(x, (pad,) * 4, value=fill)[..., dy:dy + h, dx:dx + w]


def progress(epoch, epochs, done, total, loss, width=24, extra=""):
    """One line on stderr, redrawn in place: epoch, bar, batches, running loss."""
    filled = width * done // total
    bar = "#" * filled + "-" * (width - filled)
    end = "\n" if done == total and extra else ""
    sys.stderr.write(f"\r  epoch {epoch:>2}/{epochs} [{bar}] {done:>3}/{total} loss {loss:.4f}{extra}{end}")
    sys.stderr.flush()


@torch.no_grad()
def accuracy(model, x, y, batch_size=512):
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(y), batch_size))
    return correct / len(y)


def train(model, data, epochs, batch_size, lr, seed, label, max_shift=2):
    """Adam with a one-cycle schedule (peak lr) on cross-entropy; batch order
    and shifts come from `seed` alone, so two models trained with the same
    seed see the same batches. Returns test accuracy, seconds (training with
    a test pass per epoch) and the mean training loss of the last epoch."""
    x_train, y_train, x_test, y_test = data
    fill = x_train.min().item()  # the background, after standardisation
    n_batches = (len(y_train) + batch_size - 1) // batch_size
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * n_batches)
    order = torch.Generator().manual_seed(seed)
    sys.stderr.write(f"{label}\n")
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(y_train), generator=order)
        total = 0.0
        for b in range(n_batches):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            dy, dx = torch.randint(0, 2 * max_shift + 1, (2,), generator=order).tolist()
            x = shift(x_train[idx], dy, dx, max_shift, fill)
            loss = F.cross_entropy(model(x), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            last = b + 1 == n_batches
            extra = f"  test acc {accuracy(model, x_test, y_test):.2%}" if last else ""
            progress(epoch, epochs, b + 1, n_batches, total / (b + 1), extra=extra)
    seconds = time.perf_counter() - start
    return dict(accuracy=accuracy(model, x_test, y_test), seconds=seconds, loss=total / n_batches)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-3, help="peak Adam learning rate (one-cycle)")
    p.add_argument("--seed", type=int, default=0, help="weights, split and batch order")
    p.add_argument("--threads", type=int, default=None, help="torch / OpenMP threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="3 epochs: a smoke run for the tests")
    p.add_argument("--no-torch", action="store_true", help="skip the torch.nn twin")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs = 3
    return args


def main(argv=None):
    """Runs the example; returns {"ours": {...}, "torch": {...} or None,
    "config": {...}}, each run as {"accuracy", "seconds", "loss"}."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data(seed=args.seed)
    print(f"digits: {len(data[1])} train / {len(data[3])} test images, 8x8 resized to 28x28; "
          f"LeNet, Adam one-cycle lr {args.lr}, batch {args.batch_size}, {args.epochs} epochs, "
          f"{torch.get_num_threads()} threads")

    torch.manual_seed(args.seed)
    ours = models.lenet(num_classes=10, in_channels=1, image_size=28)
    initial = {k: v.clone() for k, v in ours.state_dict().items()}
    results = dict(config=vars(args), ours=None, torch=None)
    results["ours"] = train(ours, data, args.epochs, args.batch_size, args.lr, args.seed,
                            "cnnkernels.nn")
    if not args.no_torch:
        twin = models.lenet(num_classes=10, in_channels=1, image_size=28, layers=torch.nn)
        twin.load_state_dict(initial)
        results["torch"] = train(twin, data, args.epochs, args.batch_size, args.lr, args.seed, "torch.nn")

    runs = [("cnnkernels.nn", results["ours"]), ("torch.nn", results["torch"])]
    runs = [(name, r) for name, r in runs if r is not None]
    print(f"{'':16}" + "".join(f"{name:>15}" for name, _ in runs))
    print(f"{'test accuracy':16}" + "".join(f"{r['accuracy']:>15.2%}" for _, r in runs))
    print(f"{'train time (s)':16}" + "".join(f"{r['seconds']:>15.2f}" for _, r in runs))
    print(f"{'last-epoch loss':16}" + "".join(f"{r['loss']:>15.4f}" for _, r in runs))
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
