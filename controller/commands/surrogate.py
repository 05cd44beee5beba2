"""``signaltwin surrogate train|info``: the candidate-screening surrogate model."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from configs.errors import ConfigError
from edge_accel import describe_device, load_rows_jsonl, select_device
from edge_accel.surrogate import describe_surrogate, save_surrogate, train_surrogate

DESCRIPTION = """\
The surrogate is a small neural network that predicts a candidate plan's
relative change of mean wait and of NOx from demand and plan features, so the
cycle can screen thousands of candidates and simulate only the best few on the
twin. Screening is optional: the cycle works without a surrogate.

  train  --data FILE.jsonl --out FILE.pt
         Each line: {"features": [numbers], "wait_change": -0.12,
         "nox_change": 0.003, "group": "optional run id"}. Rows of one group
         are held out together. Prints the held-out Spearman rank
         correlation with the twin; writes FILE.pt (a state_dict, loaded with
         weights_only) and FILE.pt.json (metrics and the weights' sha256).
  info   FILE.pt: print the model's shape and recorded metrics.

Exit codes: 0 ok; 1 trained, but held-out Spearman (wait) is below
--min-spearman; 2 bad data/usage.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``surrogate`` sub-command with ``train`` and ``info``."""
    parser = subparsers.add_parser(
        "surrogate",
        help="train or inspect the candidate-screening surrogate",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="surrogate_command", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="train from a JSON Lines file of twin runs")
    train.add_argument("--data", type=Path, required=True, help="training rows (.jsonl)")
    train.add_argument("--out", type=Path, required=True, help="weights file to write (.pt)")
    train.add_argument("--epochs", type=int, default=300, help="passes over the data (300)")
    train.add_argument("--hidden", default="64,64", help="hidden layer widths (64,64)")
    train.add_argument("--holdout", type=float, default=0.2, help="held-out fraction (0.2)")
    train.add_argument("--seed", type=int, default=0, help="split/initialisation seed (0)")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    train.add_argument(
        "--min-spearman", type=float, default=0.8, help="exit 1 below this held-out Spearman"
    )
    train.set_defaults(func=_train)
    info = sub.add_parser("info", help="print a weights file's shape and metrics")
    info.add_argument("weights", type=Path)
    info.set_defaults(func=_info)


def _train(args: argparse.Namespace) -> int:
    try:
        hidden = tuple(int(h) for h in args.hidden.split(",") if h.strip())
    except ValueError as e:
        raise ConfigError(f"--hidden {args.hidden!r}: expected widths like 64,64") from e
    device = select_device(args.device)
    rows = load_rows_jsonl(args.data)
    print(
        f"training on {len(rows)} rows, {describe_device(device)}, {args.epochs} epochs",
        file=sys.stderr,
    )
    started = time.perf_counter()
    model, metrics = train_surrogate(
        rows,
        hidden=hidden,
        epochs=args.epochs,
        holdout=args.holdout,
        seed=args.seed,
        device=device,
    )
    sha256 = save_surrogate(model, args.out, metrics)
    report = {
        **metrics.as_dict(),
        "sha256": sha256,
        "weights": str(args.out),
        "wall_s": round(time.perf_counter() - started, 3),
    }
    args.out.with_name(args.out.name + ".json").write_text(
        json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    print(json.dumps(report, indent=2, sort_keys=True))
    if not metrics.spearman_wait >= args.min_spearman:
        print(
            f"held-out Spearman (wait) {metrics.spearman_wait:.3f} < {args.min_spearman}: "
            "do not screen with this model",
            file=sys.stderr,
        )
        return 1
    return 0


def _info(args: argparse.Namespace) -> int:
    print(json.dumps(describe_surrogate(args.weights), indent=2, sort_keys=True))
    return 0
