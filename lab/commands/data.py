"""``lab data fetch`` and ``lab data check``: get and verify the data sets of thesis 3.3."""
from __future__ import annotations

import json
import sys

TARGETS = ("mnist", "olivetti", "patches", "all")


def _mnist(download: bool) -> dict:
    from lab.data.mnist import FILES, mnist_file  # noqa: PLC0415
    files, origins = {}, set()
    for name in FILES:
        origin, f, _ = mnist_file(name, download_missing=download)
        files[name] = str(f)
        origins.add(origin)
    return {"found": True, "origin": "/".join(sorted(origins)), "files": files, "verified": True}


def _olivetti(download: bool) -> dict:
    from lab.data.olivetti import olivetti_file  # noqa: PLC0415
    origin, f, _ = olivetti_file(download_missing=download)
    return {"found": True, "origin": origin, "files": {f.name: str(f)}, "verified": True}


def _report(fn, download: bool) -> dict:
    from lab.data import DataError, DataNotFoundError  # noqa: PLC0415
    try:
        return fn(download)
    except DataNotFoundError as exc:
        return {"found": False, "verified": False, "error": str(exc)}
    except DataError as exc:
        return {"found": True, "verified": False, "error": str(exc)}


def fetch(args) -> int:
    """Find or download each data set, verify it, print where it is."""
    targets = ("mnist", "olivetti") if args.what == "all" else (args.what,)
    bad = 0
    for what in targets:
        if what == "patches":
            from lab.data.patches import cache_file, mnist_patch_codes  # noqa: PLC0415
            try:
                mnist_patch_codes("train")
            except Exception as exc:  # DataError or download failure: say so, keep going
                print(f"patches: FAILED: {exc}", file=sys.stderr)
                bad += 1
                continue
            print(f"patches: {cache_file()} (built from verified MNIST)")
            continue
        r = _report(_mnist if what == "mnist" else _olivetti, download=True)
        if r["verified"]:
            for path in r["files"].values():
                print(f"{what}: {path} ({r['origin']}, verified)")
        else:
            print(f"{what}: FAILED: {r['error']}", file=sys.stderr)
            bad += 1
    return 1 if bad else 0


def check(args) -> int:
    """Print JSON: for each data set, where it was found and whether it verified (no download)."""
    report = {"mnist": _report(_mnist, download=False),
              "olivetti": _report(_olivetti, download=False)}
    print(json.dumps(report, indent=2))
    return 1 if any(r["found"] and not r["verified"] for r in report.values()) else 0


def register(subparsers) -> None:
    from lab.cli import group  # noqa: PLC0415
    sub = group(subparsers, "data", "fetch and verify the data sets (thesis 3.3)")
    p = sub.add_parser("fetch", help="find or download, verify, print where (into the user cache)")
    p.add_argument("what", nargs="?", default="all", choices=TARGETS,
                   help="data set (default all = mnist and olivetti; patches builds the 5x5 cache)")
    p.set_defaults(func=fetch)
    p = sub.add_parser("check", help="print JSON: where each data set is and whether it verifies")
    p.set_defaults(func=check)
