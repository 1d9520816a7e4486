"""`neurocodec show`: one sample (or load-time window) drawn as a picture (needs matplotlib:
`pip install 'neurocodec[plot]'`).

    neurocodec show ./shards                            # sample 0 -> ./shards-sample0.png
    neurocodec show ./shards --sample 12 -o s12.png     # by position (negative: from the end)
    neurocodec show ./shards --key sample_000000013     # by key
    neurocodec show ./chunks --window-ms 250 --sample 3 # window 3 of the 250 ms grid of a chunked dataset
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from neurocodec.cli.options import CommandLineError, add_storage_arguments, storage_options_from_args

FORMATS = (".png", ".pdf", ".svg")


def add_parsers(sub: Any) -> None:
    """Register `show` on the `neurocodec` command's subparsers."""
    p = sub.add_parser("show", help="draw one sample as a picture (spike raster, traces, behavior, video "
                                    "frames, fMRI slices on one time axis)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="dataset directory or URL (s3://, gs://, https://, ...)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--sample", type=int, metavar="N", help="the sample's position in the dataset, from 0 "
                                                               "(default 0; negative counts from the end)")
    which.add_argument("--key", metavar="KEY", help="the sample's key, e.g. sample_000000001")
    p.add_argument("-o", "--output", dest="picture", metavar="FILE",
                   help="picture to write, .png, .pdf or .svg (default: <dataset>-<key>.png here)")
    p.add_argument("--field", action="append", metavar="NAME", help="draw only this field (repeatable)")
    p.add_argument("--window-ms", type=float, metavar="MS",
                   help="show a window of MS milliseconds cut from a chunked dataset at load time: --sample N "
                        "is window N of the grid")
    p.add_argument("--counts", action="store_true", help="draw stored spike events as binned counts "
                                                        "(a heat map) instead of a raster")
    p.add_argument("--dpi", type=int, default=100, help="resolution in dots per inch (default 100)")
    p.add_argument("--width", type=float, default=11.0, help="picture width in inches (default 11)")
    add_storage_arguments(p)
    p.set_defaults(func=run_show)


def output_path(args: argparse.Namespace, name: str) -> Path:
    """Where the picture goes: `-o FILE`, checked, or a name made from the dataset and sample."""
    if args.picture is None:
        where = f"window{args.sample or 0}-{args.window_ms:g}ms" if args.window_ms else (
            args.key or f"sample{args.sample or 0}")
        return Path(f"{name}-{where}.png")
    path = Path(args.picture)
    if path.is_dir():
        raise CommandLineError(f"-o {args.picture} is a directory: give a file name ending in "
                               f"{', '.join(FORMATS)}")
    if path.suffix.lower() not in FORMATS:
        raise CommandLineError(f"-o {args.picture}: the picture's name must end in {', '.join(FORMATS)}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CommandLineError(f"-o {args.picture}: directory {parent} does not exist")
    return path


def _check_numbers(args: argparse.Namespace) -> None:
    if args.dpi < 10 or args.dpi > 1000:
        raise CommandLineError(f"--dpi must lie in 10..1000, got {args.dpi}")
    if not 2.0 <= args.width <= 100.0:
        raise CommandLineError(f"--width must lie in 2..100 inches, got {args.width:g}")
    if args.window_ms is not None and not args.window_ms > 0:
        raise CommandLineError(f"--window-ms must be a positive number of milliseconds, got {args.window_ms:g}")


def run_show(args: argparse.Namespace) -> int:
    """The `show` subcommand: read the sample, draw it, write the picture, say where."""
    from neurocodec.viz.errors import ShowError
    from neurocodec.viz.figure import draw, save_figure
    from neurocodec.viz.mpl import matplotlib
    from neurocodec.viz.sample import FLAGS, read_sample

    _check_numbers(args)
    name = os.fspath(args.path).rstrip("/").rsplit("/", 1)[-1] or "dataset"
    out = output_path(args, name)
    matplotlib()
    try:
        view = read_sample(args.path, index=args.sample, key=args.key, window_ms=args.window_ms,
                           fields=args.field, raster=not args.counts, words=FLAGS,
                           storage_options=storage_options_from_args(args))
    except ShowError as exc:
        raise CommandLineError(_in_flags(str(exc))) from None
    figure = draw(view, width=args.width, dpi=args.dpi)
    save_figure(figure, out)
    width, height = (figure.get_size_inches() * args.dpi).round().astype(int)
    panels = ", ".join(ax.get_label() for ax in figure.axes if ":" in ax.get_label())
    print(f"wrote {out} ({width}x{height} px): {panels}")
    return 0


def _in_flags(message: str) -> str:
    """A message naming the converter's arguments, in `neurocodec convert`'s flags."""
    return message.replace("chunk_seconds=", "neurocodec convert --chunk-seconds").replace(
        "overlap=0", "--overlap 0")
