"""`python -m jobs.check_data --data-root DIR` (or --images DIR --masks DIR): what SegSweep finds in
your folder, before a sweep trains on it.

Prints, in a few lines, the layout it recognised, the image/mask pairs, images without a mask and
masks without an image, masks united, how the masks were read (kinds and value sets), masks resized,
empty masks, unreadable files, and the split and group counts; the jobs print the same lines before
they train. Exit 0 when the data can be trained on, 1 with a one-line reason when it cannot.
"""
from __future__ import annotations

import argparse
import sys

from core.data.dataset import DataError
from core.data.download import DownloadError
from jobs import cli

PROG = "jobs.check_data"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    g = p.add_argument_group("data")
    cli.add_folder_args(g)
    g.add_argument("--image-size", type=cli.image_size, default=64,
                   help="side the images are brought to, as the jobs' --image-size (the decoded arrays are "
                        "cached, so a job at the same size starts at once)")
    args = p.parse_args(argv)
    args.seed = 0
    if args.data_root is None and args.images is None and args.masks is None:
        p.error("give the folder to check: --data-root DIR, or --images DIR --masks DIR")
    return args  # a missing or unusable folder is the check's own answer (exit 1), not a usage error (2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        data = cli.load_job_data(PROG, args, args.image_size, log=lambda line: print(f"{PROG}: {line}"))
    except (DataError, DownloadError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    if data.check is None:  # Oxford-IIIT Pet or the synthetic set: read by their own rules
        counts = " / ".join(f"{len(data.indices(s))} {s}" for s in ("train", "val", "test"))
        print(f"{PROG}: layout: {data.layout} in {data.root}; {len(data.infos)} images ({counts})")
    print(f"{PROG}: usable: {len(data.infos)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
