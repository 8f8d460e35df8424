"""radio: preprocess talking-face corpora, train RADIO, dub in bulk, evaluate — one command line.

    radio preprocess --input GLOB_OR_MANIFEST --output URI [beam options...]
    radio inspect URI [--output sheet.png]
    radio compact --input DATASET --output DATASET2 [--set target_shard_mib=256] [beam options...]
    radio train --config smoke-cpu --data URI --output URI     (bundled configs: eval, paper-192, smoke-cpu)
    radio train-sync --config smoke-cpu --data URI --output URI
    radio dub --checkpoint URI --input MANIFEST --output URI [beam options...]
    radio evaluate --generated URI --reference URI --output URI [beam options...]
    radio model-summary [--config YAML_OR_NAME]
    radio config COMMAND                 every --set key of COMMAND, its default and what it does

Job arguments are parsed here; any argument not listed for a command is passed through to
Apache Beam unchanged (``--runner DataflowRunner --project … --region … --temp_location …``).
Heavy imports (torch, Beam) happen inside the command that needs them.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

BEAM_EPILOG = ("Other --options go to Apache Beam (an option neither radio nor Beam knows is an error), e.g.\n"
               "  --runner DataflowRunner --project P --region R --temp_location gs://B/tmp --setup_file ./setup.py\n"
               "Locally the default is one worker process per core (--direct_num_workers N to change).")

#: per command: examples whose --set keys exist (tests/test_cli.py loads each through the config)
EXAMPLES = {
    "compact": ["radio compact --input out/ds --output out/ds-compact",
                "radio compact --input gs://B/ds --output gs://B/ds-packed --set target_shard_mib=512 "
                "--runner DataflowRunner ..."],
    "preprocess": ["radio preprocess --input 'videos/*.mp4' --output out/ds",
                   "radio preprocess --input corpus.csv --output gs://B/ds --resume "
                   "--set faces.backend=face_alignment --set faces.backend_args='{fan_uri: ..., fan_sha256: ..., "
                   "sfd_uri: ..., sfd_sha256: ...}'"],
    "train": ["radio train --config smoke-cpu --data out/ds --output out/run",
              "radio train --config smoke-cpu --data out/ds --output out/run --set run.steps=500 "
              "--set loss.perceptual=0"],
    "train-sync": ["radio train-sync --config smoke-cpu --data out/ds --output out/sync "
                   "--set sync_pretrain.steps=200"],
    "dub": ["radio dub --checkpoint out/run/radio.pt --input pairs.jsonl --output out/dub "
            "--set checkpoint_sha256=$(sha256sum out/run/radio.pt | cut -d' ' -f1)",
            "radio dub ... --set device=cpu --set dub.batch_size=4"],
    "evaluate": ["radio evaluate --generated out/dub/videos --reference tests/data --output out/eval "
                 "--set lpips.enabled=false --set sync.enabled=false",
                 "radio evaluate --generated pairs.csv --output out/eval --set max_frames=250 "
                 "--set length_tolerance=5"],
    "model-summary": ["radio model-summary --config paper-192 --set vit.n=3"],
}

DUB_HELP = """\
manifest (.csv with a header row, or .jsonl): one pair per record
  uri        the video whose lower face is re-rendered
  audio_uri  the speech to dub in (any file with an audio stream)
  name       optional output name under OUTPUT/videos/ (default: the pair id); no '..', not absolute;
             two lines with one name are refused before any work
  Relative uri/audio_uri resolve against the manifest's own folder (not the current directory);
  full URIs (gs://...) and absolute paths are used as written.
output:
  OUTPUT/videos/<name>.mp4 (with --references K also <name>.ref<k>.mp4)  OUTPUT/done/<id>.json
  OUTPUT/runs/<run_id>/summary.json  OUTPUT/evaluate_pairs.jsonl (ready for radio evaluate --generated)
  The video keeps its size and frame rate (VFR: CFR at its average rate); the speech keeps its own
  sample rate and channels (stream copy, else AAC). --set dub.length=video follows the video instead.
resume (the default): running the same command again skips a pair only when its done marker names
  the same checkpoint sha256, the same output-affecting settings and inputs, and its files exist;
  anything else is dubbed again and replaces the earlier file. --no-resume redoes every pair,
  --retry-rejects redoes rejected ones. A killed run is finished by running it again.
  Progress: pairs and frames done, rate and ETA.
"""

EVALUATE_HELP = """\
pairs: --generated DIR_OR_GLOB --reference DIR matches videos by relative path without suffix;
  or --generated pairs.csv/.jsonl with columns generated, reference[, dataset, method, key]
  (relative paths resolve against the manifest's folder, or --reference for reference).
keys people reach for (radio config evaluate lists all):
  --set lpips.enabled=false   --set sync.enabled=false   (until their weights are configured)
  --set length_tolerance=N    frames a generated clip may differ from its reference (else a reject)
  --set max_frames=N          score only the first N frames of each pair (long clips, memory)
output: OUTPUT/runs/<run_id>/ metrics.parquet, rejects.parquet, summary.md/.csv, report.html"""


CONFIG_COMMANDS = ("preprocess", "compact", "train", "train-sync", "dub", "evaluate", "model-summary")


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one line (no usage block) and exit 2, and that never takes a
    prefix for a whole flag: ``--run DataflowRunner`` was ``--run-id DataflowRunner`` run locally."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _epilog(command: str, *more: str) -> str:
    return "\n\n".join(["\n".join(["examples:", *(f"  {e}" for e in EXAMPLES[command])]), *more])


def _add_config(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--config", help="YAML config file (any fsspec URI), or the name of one radio ships: eval, "
                                    "paper-192, smoke-cpu (configs/NAME.yaml; a file that exists wins)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override one config value (repeatable); `radio config {command}` lists every key")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="radio", description=__doc__.split("\nHeavy imports")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    raw = {"formatter_class": argparse.RawDescriptionHelpFormatter}

    p = sub.add_parser("preprocess", help="videos -> Parquet dataset of aligned 192x192 crops + mel",
                       epilog=_epilog("preprocess", BEAM_EPILOG), **raw)
    p.add_argument("--input", required=True, help="glob, folder or manifest (.csv/.jsonl: uri[,speaker_id,split])")
    p.add_argument("--output", required=True, help="dataset URI (local path, gs://...)")
    p.add_argument("--resume", action="store_true",
                   help="skip sources an earlier run finished (rows or rejects) whose files check out; "
                        "redo failed, missing or damaged ones")
    p.add_argument("--new-version", action="store_true",
                   help="the output-affecting config changed on purpose: make this run the dataset's next "
                        "version and redo every source (without it such a run is refused)")
    p.add_argument("--retry-rejects", action="store_true", help="with --resume: process rejected sources again")
    p.add_argument("--run-id", help="name of this run (default: UTC timestamp)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config(p, "preprocess")

    p = sub.add_parser("compact", help="pack a dataset's per-source shards into large ones with a clip index",
                       epilog=_epilog("compact", "Reruns write the same shards (names hash the inputs); a changed "
                                      "input rewrites only its group.", BEAM_EPILOG), **raw)
    p.add_argument("--input", required=True, help="dataset URI written by `radio preprocess`")
    p.add_argument("--output", required=True, help="new dataset URI (rerun: same output, finished files kept)")
    _add_config(p, "compact")

    p = sub.add_parser("inspect", help="contact sheet PNG of a dataset's crops, landmarks and mel",
                       epilog="examples:\n  radio inspect out/ds\n  radio inspect out/ds --rows 8 --output sheet.png",
                       **raw)
    p.add_argument("uri", help="dataset folder or one shard")
    p.add_argument("--output", help="PNG path (default: <dataset>/contact_sheet.png)")
    p.add_argument("--clip-id", help="show this segment (default: the first rows)")
    p.add_argument("--rows", type=int, default=4, help="segments to show")
    p.add_argument("--frames", type=int, default=8, help="frames per segment")

    for name, help_ in (("train", "train RADIO on preprocessed shards"),
                        ("train-sync", "pretrain the sync discriminator S on preprocessed shards")):
        p = sub.add_parser(name, help=help_, epilog=_epilog(
            name, "Running the same command again resumes from the newest checkpoint in --output."), **raw)
        p.add_argument("--data", required=True, help="dataset URI written by `radio preprocess`")
        p.add_argument("--output", required=True, help="run folder URI (checkpoints, TensorBoard); reused to resume")
        _add_config(p, name)

    p = sub.add_parser("dub", help="dub many (video, audio) pairs with a trained checkpoint",
                       epilog=_epilog("dub", DUB_HELP, BEAM_EPILOG), **raw)
    p.add_argument("--checkpoint", required=True, help="RADIO checkpoint URI (RUN/radio.pt)")
    p.add_argument("--input", required=True, help="manifest (.csv/.jsonl) with uri (video), audio_uri[, name]")
    p.add_argument("--output", required=True, help="output folder URI")
    p.add_argument("--references", type=int, metavar="K",
                   help="dub each pair with K reference frames spread over the video's poses (default 1)")
    p.add_argument("--no-resume", action="store_true",
                   help="dub every pair again (default: skip pairs finished with the same checkpoint and settings)")
    p.add_argument("--retry-rejects", action="store_true", help="dub rejected pairs again")
    p.add_argument("--run-id", help="name of this run (default: UTC timestamp)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config(p, "dub")

    p = sub.add_parser("evaluate", help="score generated videos against references",
                       epilog=_epilog("evaluate", EVALUATE_HELP, BEAM_EPILOG), **raw)
    p.add_argument("--generated", required=True, help="folder/glob of generated videos, or a pairs manifest")
    p.add_argument("--reference", help="folder of reference videos (paired by relative path)")
    p.add_argument("--output", required=True, help="report folder URI")
    p.add_argument("--run-id", "--run_id", dest="run_id",
                   help="idempotent run name (default: <UTC date>_<dataset>_<method>_<hash of the inputs and scoring config>)")
    p.add_argument("--dataset", default=None, help="dataset name for the summary table (default: the reference folder's name)")
    p.add_argument("--method", default=None, help="method name for the summary table (default: the generated folder's name)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config(p, "evaluate")

    p = sub.add_parser("model-summary", help="parameter counts of every RADIO module",
                       epilog=_epilog("model-summary"), **raw)
    _add_config(p, "model-summary")
    p.add_argument("--resolution", type=int, help="override model resolution")

    p = sub.add_parser("config", help="every --set key of a command, its default and a description",
                       epilog="example:\n  radio config evaluate", **raw)
    p.add_argument("target", metavar="COMMAND", choices=sorted(CONFIG_COMMANDS),
                   help=f"one of {', '.join(sorted(CONFIG_COMMANDS))}")
    return parser



BEAM_COMMANDS = ("preprocess", "compact", "dub", "evaluate")


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command]


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
        # gcsfs/aiohttp log each retry of an unreachable bucket with its traceback: the failure is one line below
        for name in ("aiohttp", "google.auth", "fsspec"):
            logging.getLogger(name).setLevel(logging.ERROR)
        logging.getLogger("gcsfs").setLevel(logging.CRITICAL)   # "out of retries" + its traceback, logged at ERROR
    expand_home(args)
    restore = stop_on_signals() if args.command in BEAM_COMMANDS else None
    try:
        return _dispatch(parser, args, extra)
    except KeyboardInterrupt as e:
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL)   # its workers' exit warnings
        again = " with --resume" if args.command == "preprocess" else ""
        signum = getattr(e, "signum", 2)
        remote = getattr(e, "remote_job", None)
        if remote:   # the job runs on: a second one on the same output would race it
            print(f"radio {args.command}: stopped waiting; job {remote} is still running on the runner: cancel it "
                  "(Dataflow: `gcloud dataflow jobs cancel ID --region REGION`) or let it finish before running "
                  "this command again on the same output.", file=sys.stderr)
        else:
            print(f"radio {args.command}: {'interrupted' if signum == 2 else 'stopped (SIGTERM)'}; finished work "
                  f"is kept: run the same command again{again} to finish.", file=sys.stderr)
        return 128 + signum
    except Exception as e:  # a user's mistake is one line; anything else keeps its traceback
        rc = report(e, args)
        if rc is None:
            raise
        return rc
    finally:
        if restore:
            restore()


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler stopping the job) reached a Beam command."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (Linux /proc; none where there is no /proc)."""
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop_on_signals():
    """SIGINT and SIGTERM end a Beam command cleanly: the local worker processes it started are
    stopped too (signalled alone, the main process waited for them forever in Beam's cleanup, or
    left them running when killed), and the threads watching them die quietly (a terminal's Ctrl-C
    printed 60 lines of their tracebacks above the one that matters). Processes that were already
    children before the command (radio.cli.main called from a notebook or a service) are left
    alone; a second signal while stopping is ignored. Returns what puts the previous handlers and
    thread excepthook back (None off the main thread, where no handler can be set)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    others = set(descendants(os.getpid()))
    hook = threading.excepthook

    def on_signal(signum, frame):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        threading.excepthook = lambda hook_args: None
        for pid in descendants(os.getpid()):
            if pid not in others:
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass
        raise Interrupted(signum)

    before = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore():
        for sig, handler in before.items():
            signal.signal(sig, handler)
        threading.excepthook = hook

    return restore


PATH_ARGS = ("input", "output", "data", "generated", "reference", "checkpoint", "uri", "config")


def expand_home(args: argparse.Namespace) -> None:
    """``~`` and ``~user`` in local paths, expanded once here: fsspec expands them when it opens a
    file but ``os.path`` does not, so checks and logs went to a literal ``./~`` folder."""
    for name in PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, name, os.path.expanduser(value))


def report(e: BaseException, args: argparse.Namespace) -> int | None:
    """Print a user's mistake (exit status 2) or a failed job (1) as one line on stderr; None for
    anything else, or with --verbose (the caller keeps its traceback)."""
    from preprocess.errors import JobFailed, TemplateWritten, UserError

    if isinstance(e, TemplateWritten):
        print(f"radio {args.command}: {e}")
        return 0
    if isinstance(e, UserError) and not args.verbose:
        print(f"radio {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    if isinstance(e, JobFailed) and not args.verbose:
        print(f"radio {args.command}: job failed: {e}", file=sys.stderr)
        return 1
    from preprocess.failures import describe, is_environment_error

    if is_environment_error(e) and not args.verbose:   # the network, the disk: nothing was the user's
        print(f"radio {args.command}: environment failure: {describe(e)}; run the same command again later "
              "(-v for the traceback).", file=sys.stderr)
        return 1
    return None


def one_line(e: Exception) -> str:
    """The message of ``e``; raised in a DataLoader worker, torch re-raises it with the worker's
    traceback in the message ("Caught X in DataLoader worker process 0. Original Traceback ..."),
    whose last line is ``module.X: message``."""
    msg = str(e)
    if "Original Traceback" in msg:
        msg = msg.strip().splitlines()[-1].split(": ", 1)[-1]
    return msg


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> int:
    from radio import checks

    checks.unknown_options(extra, subparser(parser, args.command), beam=args.command in BEAM_COMMANDS)
    if getattr(args, "config", None):   # a bundled config's name (or configs/NAME.yaml outside the repo) -> its file
        from preprocess.config import resolve_config

        args.config = resolve_config(args.config)
    if args.command == "config":
        from radio import config_doc

        print(config_doc.render(args.target))
        return 0
    if args.command in BEAM_COMMANDS:   # Dataflow: local locations refused before any check reaches a bucket
        from pipelines.options import check_reachable_early

        check_reachable_early(extra, [(f"--{name}", getattr(args, name, None))
                                      for name in ("input", "output", "checkpoint", "generated", "reference")])
    from preprocess.uri import check_network

    check_network([getattr(args, name, None) for name in ("input", "output", "checkpoint", "generated", "reference",
                                                           "data")])
    checks.command(args)
    if args.command == "preprocess":
        from pipelines import preprocess as job
        return job.main(args, extra)
    if args.command == "compact":
        from pipelines import compact as job
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
