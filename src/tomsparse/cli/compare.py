"""``tomsparse compare RUN_DIR [RUN_DIR ...] [--out DIR]``: several models' runs side by side
(baseline chance check, verdicts per claim and m, ToM change per mask), printed as a table and
written to DIR/compare.csv and DIR/compare.html."""

from __future__ import annotations

import argparse

from tomsparse.files import check_output_dir
from tomsparse.report.compare import COMPARE_FILES, write_compare


def cmd_compare(args: argparse.Namespace) -> int:
    check_output_dir(args.out)  # before any run is read
    _table, text, paths = write_compare(args.run_dirs, args.out)
    print(text)
    print(f"\nwrote {paths['csv']}, {paths['html']}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="several runs (models) side by side: baseline chance "
                                       "check, specificity verdicts and ToM changes")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run folders written by `tomsparse run` (or sweep folders)")
    p.add_argument("--out", default="compare",
                   help=f"folder for {COMPARE_FILES['csv']} and {COMPARE_FILES['html']} (default: "
                        "./compare)")
    p.set_defaults(handler=cmd_compare)
