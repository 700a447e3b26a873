"""Command line: ``python -m sync_core {sync,plan,copy,event,verify,check,poison} ...``.

Exit codes: 0 all succeeded, 1 something failed (the summary says what), 2 configuration error.
``verify``: 0 complete, 1 incomplete (the table says what), 2 configuration error.
``check``: 0 nothing fails, 1 a finding fails (each says its fix), 2 configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from sync_core.azure.events import MAX_EVENT_BYTES, Action, Decision, decide, load_events, log_decision
from sync_core.azure.poison import PoisonQueue
from sync_core.azure.poison_messages import Selector
from sync_core.azure.storage import StorageAccess, access_from_env
from sync_core.cli.render import Progress, render_check, render_plan, render_summary
from sync_core.config.load import load_config
from sync_core.config.model import SyncConfig
from sync_core.config.settings import settings_help
from sync_core.errors import ConfigError, InvalidContent, SetupError, SyncError
from sync_core.jobs import check, verify, verify_findings
from sync_core.jobs.syncer import Syncer
from sync_core.plan.work import Check
from sync_core.registry.names import ImageRef
from sync_core.report import metrics
from sync_core.report.metrics import Trigger
from sync_core.report.summary import Summary

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


CONFIG_HELP = settings_help()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sync_core",
        description="Mirror images and OCI artifacts from a source registry (ACR) to target registries.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=CONFIG_HELP,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        p = subcommand(sub, name, summary, description, CONFIG_HELP, "the summary")
        p.add_argument("--target", action="append", metavar="NAME", help="only this target (repeatable)")
        return p

    only_repo: dict[str, Any] = {
        "action": "append",
        "metavar": "REPO",
        "help": "only this source repository (repeatable)",
    }
    p = command(
        "sync",
        "copy every missing tag of every repository to every target",
        "Full sync: list the source catalog, diff each target, copy what is missing.",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="plan only: list what would be copied, copy nothing"
    )
    full_check: dict[str, Any] = {
        "action": "store_true",
        "help": "compare every tag the targets have with the source (one HEAD each) and look for "
        "referrers added to everything, as the daily full check of SYNC_COMPARE=recent does",
    }
    p.add_argument("--repository", **only_repo)
    p.add_argument("--full-check", **full_check)
    p = command(
        "plan",
        "show what sync would copy, per target",
        "Show, per target, the tags that sync would copy and why.",
    )
    p.add_argument("--repository", **only_repo)
    p.add_argument("--full-check", **full_check)
    p = command(
        "copy",
        "copy one image (REPOSITORY:TAG or REPOSITORY@DIGEST) to every target",
        "Copy one image, all platforms, to every target (tag filters do not apply).",
    )
    p.add_argument("image", metavar="REPOSITORY:TAG", help="source repository and tag (or @digest)")
    p = command(
        "event",
        "handle an Event Grid event file (EventGridSchema or CloudEvents) inline",
        "Validate Event Grid events from FILE (one event or an array) exactly as the function does, "
        "and copy the pushed tags to every target inline.",
    )
    p.add_argument(
        "file", metavar="FILE", help="JSON file with one event or an array of events ('-' for stdin)"
    )
    p = command(
        "verify",
        "check that every selected tag and referrer is at each target with the source digest",
        "Check, without writing anything, that every tag sync would mirror (and its referrers) is at "
        "each target with the source digest. Exit 0: complete; 1: a table says what is missing or "
        "differs.\n\n" + verify.COST,
    )
    p.add_argument("--repository", **only_repo)
    p.add_argument(
        "--deep",
        action="store_true",
        help="also fetch every manifest at the target and HEAD every child manifest and blob",
    )
    p = command(
        "check",
        "before the first sync: what each registry allows, and what will fail (writes nothing)",
        "Ask the source, Key Vault and each target what they allow of this configuration, writing "
        "nothing. One row per finding: ok, warn or fail, what was asked, what was answered, and "
        "the setting or action that fixes it. Exit 0: nothing fails; 1: something does; 2: the "
        "configuration itself is invalid.\n\n" + check.COST,
    )
    p.add_argument(
        "--sample",
        type=int,
        default=check.DEFAULT_SAMPLE,
        metavar="N",
        help=f"source repositories whose tags, a manifest and referrers are read (default {check.DEFAULT_SAMPLE})",
    )
    _poison_parser(sub)
    return parser


POISON_HELP = """\
storage access (first found): --connection-string, --account-url, --account-name, then the
environment: AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCOUNT, and the app's own
AzureWebJobsStorage / AzureWebJobsStorage__accountName. An account URL or name signs in with
DefaultAzureCredential (az login); the identity needs Storage Queue Data Contributor.
Connection strings hold keys: prefer the environment variable to the command line.

The queue is SYNC_QUEUE (its poison queue is <SYNC_QUEUE>-poison), or with --queue events
SYNC_EVENT_QUEUE (the events' work, <SYNC_EVENT_QUEUE>-poison). Messages are validated with
the app's configuration (the same settings or SYNC_CONFIG file as the other commands), as the
worker does: an invalid message is never replayed, drop it instead.

exit codes: 0 done, 1 a storage operation failed (what is left stays in the poison queue),
2 configuration, access or permission problem
"""


def subcommand(
    sub: Any, name: str, summary: str, description: str, epilog: str, printed: str
) -> argparse.ArgumentParser:
    """A command (or poison action) with the options every one takes: --config and --json."""
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="YAML or JSON configuration file (overrides SYNC_CONFIG)")
    p.add_argument("--json", action="store_true", help=f"print {printed} as JSON on stdout")
    return p


def _poison_parser(sub: Any) -> None:
    p = sub.add_parser(
        "poison",
        help="list, replay or drop the messages of the poison queue",
        description="The messages the worker gave up on (<SYNC_QUEUE>-poison).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=POISON_HELP,
    )
    actions = p.add_subparsers(dest="poison_command", required=True, metavar="ACTION")

    def action(name: str, summary: str) -> argparse.ArgumentParser:
        a = subcommand(actions, name, summary, summary, POISON_HELP, "the result")
        a.add_argument(
            "--queue",
            choices=("work", "events"),
            default="work",
            help="the timer's work queue SYNC_QUEUE (default) or the events' SYNC_EVENT_QUEUE",
        )
        where = a.add_mutually_exclusive_group()
        where.add_argument(
            "--connection-string", metavar="TEXT", help="storage connection string (Azurite, keys)"
        )
        where.add_argument("--account-url", metavar="URL", help="https://<account>.queue.core.windows.net")
        where.add_argument("--account-name", metavar="NAME", help="storage account name (Entra ID sign-in)")
        return a

    a = action("list", "show the messages: decoded, validated, with the reason an invalid one is invalid")
    a.add_argument(
        "--all",
        action="store_true",
        help="scan the whole queue (each message is hidden for a moment and its dequeue count "
        "grows by one) instead of peeking at the first 32",
    )
    a.set_defaults(target=None)
    for name, summary in (
        ("replay", "send messages back to the work queue, then delete them here"),
        ("drop", "delete messages from the poison queue"),
    ):
        a = action(name, summary)
        a.add_argument("ids", nargs="*", metavar="ID", help="message ids (see `poison list`)")
        a.add_argument(
            "--all", action="store_true", help="every message (that the other options let through)"
        )
        a.add_argument(
            "--repository",
            action="append",
            metavar="REPO",
            help="only messages for this source repository (repeatable)",
        )
        a.add_argument(
            "--target", action="append", metavar="NAME", help="only messages for this target (repeatable)"
        )
        if name == "drop":
            a.add_argument("--invalid", action="store_true", help="only messages that are not valid")
        a.add_argument(
            "--dry-run",
            action="store_true",
            help="show what would be done; nothing is sent or deleted (the scan still hides each "
            "message for a moment)",
        )


def _poison(args: argparse.Namespace, config: Any, environ: dict[str, str] | None) -> int:
    """``poison list|replay|drop``: exit 0 done, 1 a storage operation failed, 2 configuration/access."""
    env = dict(os.environ if environ is None else environ)
    report: Any
    try:
        if args.connection_string:
            access = StorageAccess(connection_string=args.connection_string)
        elif args.account_url:
            access = StorageAccess(account_url=args.account_url)
        elif args.account_name:
            access = StorageAccess.for_account(args.account_name)
        else:
            found = access_from_env(env)
            if found is None:
                raise ConfigError(
                    "storage: give --account-name NAME (Azure: signs in with DefaultAzureCredential) "
                    "or set AZURE_STORAGE_CONNECTION_STRING (Azurite)"
                )
            access = found
        selector = None
        if args.poison_command != "list":
            selector = Selector(
                frozenset(args.ids),
                args.all,
                frozenset(args.repository or ()),
                frozenset(args.target or ()),
                getattr(args, "invalid", False),
            )
        queue = config.event_queue if args.queue == "events" else config.queue
        with PoisonQueue(access, queue, config) as queues:
            if selector is None:
                report = queues.listing(scan=args.all)
            elif args.poison_command == "replay":
                report = queues.replay(selector, dry_run=args.dry_run)
            else:
                report = queues.drop(selector, dry_run=args.dry_run)
    except SyncError as exc:
        return _error(exc)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
    return EXIT_OK if getattr(report, "ok", True) else EXIT_FAILED


def _error(exc: SyncError) -> int:
    """Print what stopped a command; exit 2 when the fix is in the settings or permissions, else 1."""
    print(f"error: {exc}", file=sys.stderr)
    return EXIT_CONFIG if isinstance(exc, (ConfigError, SetupError)) else EXIT_FAILED


def main(argv: list[str] | None = None, *, environ: dict[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(
        level=level if not args.json else max(level, logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.verbose == 0 and not args.json:
        logging.getLogger("sync_core.sync").setLevel(logging.INFO)
    try:
        config = load_config(environ, args.config)
        if args.target:
            for name in args.target:
                config.target(name)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "verify":
        return verify_command(args, config)
    if args.command == "check":
        return check_command(args, config)
    if args.command == "poison":
        return _poison(args, config, environ)
    sink = metrics.current()
    try:
        with sink.timed(Trigger.CLI) as run:
            code = _command(args, config)
            run.ok = code == EXIT_OK
        return code
    finally:
        sink.flush()  # a short process: export before it ends


def _command(args: argparse.Namespace, config: SyncConfig) -> int:
    try:
        with Syncer(config) as syncer:
            summary = _run(args, syncer)
    except SyncError as exc:
        return _error(exc)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2, sort_keys=False))
    elif args.command == "plan":
        print(render_plan(summary, config))
    else:
        print(render_summary(summary))
    return EXIT_OK if summary.ok else EXIT_FAILED


def verify_command(args: argparse.Namespace, config: SyncConfig) -> int:
    """``verify``: 0 complete, 1 incomplete, 2 configuration error (nothing is written)."""
    try:
        with Syncer(config, metrics=metrics.Metrics()) as syncer:  # measures nothing: no exporter
            report = verify.Verifier(syncer, deep=args.deep).run(args.repository, args.target)
    except SyncError as exc:
        return _error(exc)
    print(json.dumps(report.to_dict(), indent=2) if args.json else verify_findings.render(report))
    return EXIT_OK if report.complete else EXIT_FAILED


def check_command(args: argparse.Namespace, config: SyncConfig) -> int:
    """``check``: 0 nothing fails, 1 something fails, 2 configuration error (nothing is written)."""
    if args.sample < 0:
        print("error: --sample: must be 0 or more", file=sys.stderr)
        return EXIT_CONFIG
    try:
        with Syncer(config, metrics=metrics.Metrics()) as syncer:  # measures nothing: no exporter
            report = check.Checker(syncer, sample=args.sample).run(args.target)
    except SyncError as exc:
        return _error(exc)
    print(json.dumps(report.to_dict(), indent=2) if args.json else render_check(report))
    return EXIT_OK if report.ok else EXIT_FAILED


def _run(args: argparse.Namespace, syncer: Syncer) -> Summary:
    progress = Progress()
    targets = args.target
    try:
        if args.command in ("sync", "plan"):
            dry_run = args.command == "plan" or args.dry_run
            return syncer.run(
                dry_run=dry_run,
                repositories=args.repository,
                targets=targets,
                progress=progress,
                check=Check.FULL if args.full_check else None,
            )
        started = time.monotonic()
        summary = Summary()
        if args.command == "copy":
            try:
                ref = ImageRef.parse(args.image)
            except SyncError as exc:
                raise ConfigError(f"REPOSITORY:TAG: {exc}") from None
            summary.repositories = 1
            syncer.copy_image(ref, summary, targets)
        else:
            copy_events(read_events(args.file), syncer, summary, targets)
        summary.duration_seconds = time.monotonic() - started
        return summary
    finally:
        progress.finish()


def read_events(path: str) -> list[Any]:
    """The events of ``FILE`` (``-``: standard input), one event or an array."""
    try:
        raw = sys.stdin.buffer.read(MAX_EVENT_BYTES + 1) if path == "-" else Path(path).read_bytes()
        return load_events(raw)
    except (OSError, InvalidContent) as exc:
        raise ConfigError(f"FILE: cannot use {path}: {exc}") from None


def copy_events(
    events: list[Any], syncer: Syncer, summary: Summary, targets: list[str] | None = None
) -> list[Decision]:
    """``event FILE``: decide each event as the Event Grid function does, then copy inline."""
    recorder = syncer.recorder(summary)
    decisions = []
    for event in events:
        decision = decide(event, syncer.config)
        log_decision(decision)
        decisions.append(decision)
        if decision.action is Action.ERROR:
            recorder.failed(f"event {decision.event_id}", decision.reason)
        chosen = [work for work in decision.work if not targets or work.target in targets]
        if chosen:
            syncer.copy_group(chosen, recorder)
    summary.repositories = len({d.repository for d in decisions if d.work})
    return decisions
