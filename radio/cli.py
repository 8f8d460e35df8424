"""radio: preprocess talking-face corpora, train RADIO, dub in bulk, evaluate — one command line.

    radio preprocess --input GLOB_OR_MANIFEST --output URI [beam options...]
    radio inspect URI [--output sheet.png]
    radio train --config configs/smoke-cpu.yaml --data URI --output URI
    radio train-sync --config configs/smoke-cpu.yaml --data URI --output URI
    radio dub --checkpoint URI --input MANIFEST --output URI [beam options...]
    radio evaluate --generated URI --reference URI --output URI [beam options...]
    radio model-summary [--config YAML]

Job arguments are parsed here; any argument not listed for a command is passed through to
Apache Beam unchanged (``--runner DataflowRunner --project … --region … --temp_location …``).
Heavy imports (torch, Beam) happen inside the command that needs them.
"""
from __future__ import annotations

import argparse
import logging
import sys

BEAM_EPILOG = ("Other --options go to Apache Beam unchanged, e.g. --runner DataflowRunner --project P "
               "--region R --temp_location gs://B/tmp --setup_file ./setup.py; locally the default is "
               "one worker process per core (--direct_num_workers N to change).")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (any fsspec URI)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set faces.backend=face_alignment (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radio", description=__doc__.split("\nHeavy imports")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("preprocess", help="videos -> Parquet dataset of aligned 192x192 crops + mel",
                       epilog=BEAM_EPILOG)
    p.add_argument("--input", required=True, help="glob, folder or manifest (.csv/.jsonl: uri[,speaker_id,split])")
    p.add_argument("--output", required=True, help="dataset URI (local path, gs://...)")
    p.add_argument("--resume", action="store_true", help="skip sources an earlier run finished (rows or rejects)")
    p.add_argument("--retry-rejects", action="store_true", help="with --resume: process rejected sources again")
    p.add_argument("--run-id", help="name of this run (default: UTC timestamp)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config(p)

    p = sub.add_parser("inspect", help="contact sheet PNG of a dataset's crops, landmarks and mel")
    p.add_argument("uri", help="dataset folder or one shard")
    p.add_argument("--output", help="PNG path (default: <dataset>/contact_sheet.png)")
    p.add_argument("--clip-id", help="show this segment (default: the first rows)")
    p.add_argument("--rows", type=int, default=4, help="segments to show")
    p.add_argument("--frames", type=int, default=8, help="frames per segment")

    for name, help_ in (("train", "train RADIO on preprocessed shards"),
                        ("train-sync", "pretrain the sync discriminator S on preprocessed shards")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--data", required=True, help="dataset URI written by `radio preprocess`")
        p.add_argument("--output", required=True, help="run folder URI (checkpoints, TensorBoard); reused to resume")
        _add_config(p)

    p = sub.add_parser("dub", help="dub many (video, audio) pairs with a trained checkpoint", epilog=BEAM_EPILOG)
    p.add_argument("--checkpoint", required=True, help="RADIO checkpoint URI")
    p.add_argument("--input", required=True, help="manifest (.csv/.jsonl) with uri (video), audio_uri[, output name]")
    p.add_argument("--output", required=True, help="output folder URI")
    p.add_argument("--run-id")
    _add_config(p)

    p = sub.add_parser("evaluate", help="score generated videos against references", epilog=BEAM_EPILOG)
    p.add_argument("--generated", required=True, help="folder/glob of generated videos, or a pairs manifest")
    p.add_argument("--reference", help="folder of reference videos (paired by relative path)")
    p.add_argument("--output", required=True, help="report folder URI")
    p.add_argument("--run-id", "--run_id", dest="run_id",
                   help="idempotent run name (default: today's UTC date)")
    p.add_argument("--dataset", default=None, help="dataset name for the summary table (default: the reference folder's name)")
    p.add_argument("--method", default=None, help="method name for the summary table (default: the generated folder's name)")
    _add_config(p)

    p = sub.add_parser("model-summary", help="parameter counts of every RADIO module")
    _add_config(p)
    p.add_argument("--resolution", type=int, help="override model resolution")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # Beam's local workers log every harness event at INFO
        for name in ("apache_beam", "absl"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # each local worker warns once that it has no semi_persistent_directory: harmless
        logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    try:
        return _dispatch(parser, args, extra)
    except Exception as e:  # a user's mistake is one line; anything else keeps its traceback
        from preprocess.errors import UserError

        if isinstance(e, UserError) and not args.verbose:
            print(f"radio {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> int:
    beam_commands = {"preprocess", "dub", "evaluate"}
    if extra and args.command not in beam_commands:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "preprocess":
        from pipelines import preprocess as job
        return job.main(args, extra)
    if args.command == "inspect":
        from preprocess import inspect as job
        return job.main(args)
    if args.command in ("train", "train-sync"):
        from radio.train import cli as job
        return job.main(args)
    if args.command == "dub":
        from pipelines import dub as job
        return job.main(args, extra)
    if args.command == "evaluate":
        from pipelines import evaluate as job
        return job.main(args, extra)
    if args.command == "model-summary":
        from radio.model import summary as job
        return job.main(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
