"""``lightseg batch``: a cohort on a Dask cluster (local by default), with a results table as its record."""
from __future__ import annotations

import sys


def register(sub) -> None:
    from ..batch import FORMATS, INSTALL

    parser = sub.add_parser(
        "batch", help=f"segment a cohort on a Dask cluster, with a results table [needs {INSTALL}]",
        description="COHORT is a folder of volumes (and DICOM series folders) or a manifest CSV with the columns "
                    "case,image (or case,ed,es: cardiac function per subject; relative paths are the manifest's). "
                    "OUT gets labels/ and results.csv (and results.parquet with pyarrow): one row per case. A rerun "
                    "into the same OUT does only the cases without a complete row whose outputs match it.")
    parser.add_argument("cohort", metavar="COHORT")
    parser.add_argument("out", metavar="OUT")
    parser.add_argument("--model", required=True, help="model id (see 'lightseg models')")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="an existing Dask cluster (tcp://host:8786); default: a local one sized to this machine")
    parser.add_argument("--workers", type=int, default=None, help="local cluster: worker processes (default: cores)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per case (default: each machine's cores shared among its workers)")
    parser.add_argument("--retries", type=int, default=2, help="retries of a case that crashes (default 2)")
    parser.add_argument("--format", choices=FORMATS, default="nii.gz", help="labelmap file type")
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx")
    parser.add_argument("--int8", action="store_true", help="use the model's int8 version")
    parser.add_argument("--allow-gaps", action="store_true", help="accept DICOM series with gaps (with a note)")
    parser.add_argument("--hu-offset", type=float, default=None, metavar="HU",
                        help="add this to every CT's values first (-1024 for CTs stored as HU + 1024)")
    parser.add_argument("--progress", choices=("auto", "bar", "none"), default="auto")
    parser.set_defaults(func=run)


def run(args) -> int:
    from .. import batch

    batch.require()
    client = None
    if args.scheduler:
        from distributed import Client

        try:
            client = Client(args.scheduler, timeout="30s")
        except OSError as err:
            from ..errors import LightSegError

            raise LightSegError(f"no Dask scheduler at {args.scheduler}: {err}") from None
    try:
        table = batch.run(args.cohort, args.model, client, args.out, fmt=args.format, workers=args.workers,
                          threads=args.threads, retries=args.retries, backend=args.backend, int8=args.int8,
                          allow_gaps=args.allow_gaps, hu_offset=args.hu_offset, progress=args.progress)
    finally:
        if client is not None:
            client.close()
    s = table.attrs["summary"]
    rate = f", {s['cases_per_minute']:.1f} cases/min" if s["cases_per_minute"] else ""
    print(f"{s['cases']} cases: {s['ran']} run, {s['skipped']} already in the table, {s['failed']} failed, "
          f"{s['flagged']} flagged | {s['seconds']:.1f} s{rate} | table: {s['table']}"
          + (f" and {s['parquet']}" if s["parquet"] else ""))
    failed = table.loc[table["error"].notna(), ["case", "error"]]
    for case, error in failed.itertuples(index=False):
        print(f"lightseg: failed: {case}: {error}", file=sys.stderr)
    return 2 if len(failed) else 0
