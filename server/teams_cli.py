"""``wisp teams set|list``: per-team settings (the LoRA upload quota, the default source).

The quota mirrors Novita's "5 LoRA uploads per user" and is off by default;
it is enforced by the upload ingest, so it holds for modelUpload and every
REST dialect alike.  The default source is where stablediffusionapi's
``load_model`` puts a bare ``model_id`` (created on first use).
"""

from __future__ import annotations

import argparse
import re
import sys


def _settings(args: argparse.Namespace, create: bool = False):
    from engine.registry.team_settings import TeamSettings
    from server.datadir import admin_database

    # As every ``wisp`` subcommand: ``--data-dir``, else WISP_DATA_DIR / the default; said on stderr.
    return TeamSettings(admin_database(args.data_dir, create=create))


def _limit(text: str) -> int | None:
    if text.lower() in ("off", "none", "unlimited"):
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError("a number of LoRA models, or 'off'")
    return int(text)


def cmd_teams_set(args: argparse.Namespace) -> int:
    settings = _settings(args, create=True)
    if args.lora_upload_limit is None and args.default_source is None:
        print("nothing to set: give --lora-upload-limit and/or --default-source", file=sys.stderr)
        return 2
    if args.default_source is not None:
        from engine.registry.models import ModelRegistry, ReservedSource, check_source_name

        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", args.default_source):
            print("a source name is lowercase letters, digits, '-' and '_' (at most 64)", file=sys.stderr)
            return 2
        try:
            check_source_name(args.default_source)
        except ReservedSource as exc:
            print(f"wisp: {exc.message}", file=sys.stderr)
            return 1
        owner = ModelRegistry(settings.db).source_team(args.default_source)
        if owner is None:
            ModelRegistry(settings.db).create_source(args.default_source, args.team)
        elif owner != args.team:
            print(f"source {args.default_source!r} belongs to team {owner!r}", file=sys.stderr)
            return 1
        settings.set_default_source(args.team, args.default_source)
    if args.lora_upload_limit is not None:
        settings.set_lora_upload_limit(args.team, None if args.lora_upload_limit == "off" else args.lora_upload_limit)
    return cmd_teams_list(args, only=args.team)


def cmd_teams_list(args: argparse.Namespace, only: str | None = None) -> int:
    for row in _settings(args).list():
        if only is not None and row.team != only:
            continue
        limit = "off" if row.lora_upload_limit is None else str(row.lora_upload_limit)
        print(f"{row.team}\tlora-upload-limit={limit}\tloras={row.lora_models}\tdefault-source={row.default_source or '-'}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    teams = sub.add_parser("teams", help="per-team settings: LoRA upload quota, default source").add_subparsers(
        dest="teams_command", required=True
    )
    tset = teams.add_parser("set", help="set a team's LoRA upload limit and/or default source")
    tset.add_argument("team")
    tset.add_argument("--lora-upload-limit", type=lambda t: "off" if _limit(t) is None else _limit(t), default=None,
                      metavar="N|off", help="most LoRA models the team may hold (new uploads are refused past it); off = no limit")
    tset.add_argument("--default-source", default=None, help="the source load_model puts bare model_ids under (created if new)")
    tset.add_argument("--data-dir", default=None)
    tset.set_defaults(func=cmd_teams_set)
    tlist = teams.add_parser("list", help="every team's settings")
    tlist.add_argument("--data-dir", default=None)
    tlist.set_defaults(func=cmd_teams_list)
