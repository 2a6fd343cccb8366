"""``duplus data``: list the pinned real datasets, or fetch, verify and convert one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["register"]

DEFAULT_CACHE = Path.home() / ".cache" / "duplus" / "archives"


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="fetch the pinned real training and evaluation data")
    verbs = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    listing = verbs.add_parser("list", help="the datasets, their source archives, checksums and licences")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_run_list)
    get = verbs.add_parser("get", help="download (sha256 checked) and convert one dataset into a folder")
    get.add_argument("name", help="a dataset name from 'duplus data list'")
    get.add_argument("-o", "--output", required=True, help="the folder to create (Decathlon layout + mapping files)")
    get.add_argument("--cache", default=str(DEFAULT_CACHE), help=f"where archives are kept (default: {DEFAULT_CACHE})")
    get.add_argument("--find-links", help="a local folder holding the archive, instead of the package index")
    get.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    get.set_defaults(run=_run_get)
    _register_convert(verbs)


def _register_convert(verbs) -> None:
    from .layouts import LAYOUTS

    convert = verbs.add_parser(
        "convert", help="convert a downloaded public dataset (its own layout) into Decathlon folders + mapping files",
        description="Layouts: " + "; ".join(f"{name}: {text}" for name, (_, text) in LAYOUTS.items()))
    convert.add_argument("source", help="the dataset folder as its authors ship it")
    convert.add_argument("--layout", required=True, choices=list(LAYOUTS), help="the source's layout")
    convert.add_argument("-o", "--output", required=True,
                         help="the folder to create: one Decathlon folder per image kind (ct/, mr/, pet/...)")
    convert.add_argument("--splits", help="comma-separated: totalsegmentator train,val,test or all (meta.csv); "
                                          "amos train,val (imagesTr, imagesVa). Default: train")
    convert.add_argument("--symlink", action="store_true",
                         help="link images that need no change instead of copying them (the source must stay)")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    convert.set_defaults(run=_run_convert)


def _run_list(args: argparse.Namespace) -> int:
    from .sources import SOURCES

    rows = [{"name": d.name, "description": d.description, "archive": d.archive.requirement,
             "sha256": d.archive.sha256, "licence": d.archive.licence, "attribution": d.archive.attribution}
            for d in SOURCES.values()]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for row in rows:
            print(f"{row['name']}: {row['description']}\n    from {row['archive']} ({row['licence']}), sha256 {row['sha256']}")
    return 0


def _run_get(args: argparse.Namespace) -> int:
    from .sources import get_dataset

    folder = get_dataset(args.name, args.output, args.cache, args.find_links, args.overwrite)
    print(json.dumps({"dataset": args.name, "folder": str(folder)}))
    return 0


def _run_convert(args: argparse.Namespace) -> int:
    from .layouts import ConvertOptions, convert_dataset

    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip()) if args.splits else None
    report = convert_dataset(args.layout, args.source, args.output,
                             ConvertOptions(splits=splits, symlink=args.symlink), overwrite=args.overwrite)
    output = Path(args.output)
    print(json.dumps({
        "layout": args.layout,
        "folder": str(output),
        "parts": {name: {"path": str(output / part["folder"]), "cases": part["cases"],
                         "mappings": [str(output / part["folder"] / m) for m in part["mappings"]]}
                  for name, part in report.parts.items()},
        "notes": report.notes,
        "licence": report.licence,
    }, indent=1))
    return 0
