"""``node0 models list|prepare``: the model catalog and its offline assets."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list and prepare models (offline assets)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="catalog models and whether they are prepared")
    listing.set_defaults(handler=run_list)
    prepare = sub.add_parser(
        "prepare",
        help="convert a catalog model to a cached HF directory",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    prepare.add_argument("name", help="catalog name, e.g. smollm2-135m")
    prepare.add_argument("--force", action="store_true", help="convert again even if cached")
    prepare.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs"),
        help="where the run directory (run record) goes",
    )
    prepare.set_defaults(handler=run_prepare)


def run_list(args: argparse.Namespace) -> int:
    from models.catalog import CATALOG, prepared_dir

    for name, spec in sorted(CATALOG.items()):
        ready = (prepared_dir(name) / "node0_asset.json").is_file()
        print(
            f"{name:<16} {spec.family:<6} source {spec.pip_name}:{spec.gguf_filename}  "
            f"{'prepared at ' + str(prepared_dir(name)) if ready else 'not prepared'}"
        )
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from base.banner import print_banner, status
    from models.assets import asset_record, prepare_model
    from models.catalog import get_spec, source_gguf_path
    from provenance import create_run_dir

    spec = get_spec(args.name)
    source = source_gguf_path(spec)
    print_banner("models prepare", None, None, [f"model: {spec.name}", f"source: {source}"])
    run = create_run_dir(
        args.runs_dir, "models-prepare", config={"model": spec.name, "force": args.force}
    )
    run.add_input(source, role="source-gguf")
    path = prepare_model(args.name, force=args.force)
    record = asset_record(path)
    run.finish("done", output_dir=str(path), outputs=record["files"])
    status("done", f"{spec.name} ready at {path}")
    for name, digest in sorted(record["files"].items()):
        print(f"  {digest}  {name}")
    print(f"run record: {run.path / 'run_record.json'}")
    return 0
