"""`tuneplan presets`: list, show, save and delete presets.

    tuneplan presets list                       every preset on the search path, and where from
    tuneplan presets show NAME                  its file, where it lives, its evidence
    tuneplan presets save NAME --from RUN       a finished run's configuration + what it measured
    tuneplan presets delete NAME [--yes]        project or user presets (asks first)

Search order (first match wins): ./presets/, the user folder ($TUNEPLAN_PRESETS_DIR or the
platform's user config folder + /presets), the presets shipped with tuneplan. Loading one
(`tuneplan plan --preset NAME`, `tuneplan train --preset NAME`) re-fits it to the hardware.
No torch, no textual.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="presets_command", metavar="ACTION")
    ls = sub.add_parser("list", help="list presets and where each comes from")
    ls.add_argument("--json", action="store_true", help="one JSON object")
    show = sub.add_parser("show", help="show a preset's file, origin and evidence")
    show.add_argument("name", help="preset name or .toml path")
    save = sub.add_parser("save", help="save a finished run as a preset")
    save.add_argument("name", help="preset name: letters, digits, '.', '_', '-'")
    save.add_argument("--from", dest="run", required=True, metavar="RUN", help="run name or run folder")
    save.add_argument("--description", help="one line saying what it is for")
    save.add_argument("--project", action="store_true", help="save into ./presets/ instead of the user folder")
    save.add_argument("--force", action="store_true", help="replace an existing preset of that name")
    save.add_argument("--runs-dir", help="runs root (default: $TUNEPLAN_RUNS_DIR or the user data folder)")
    delete = sub.add_parser("delete", help="delete a project or user preset")
    delete.add_argument("name")
    delete.add_argument("--yes", "-y", action="store_true", help="do not ask")


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "presets_command", None) or "list"
    return {"list": _list, "show": _show, "save": _save, "delete": _delete}[action](args)


def _list(args: argparse.Namespace) -> int:
    from tuneplan.services import presets as P

    entries = P.list_presets()
    if getattr(args, "json", False):
        print(json.dumps({
            "search_path": [{"origin": o, "folder": str(f)} for o, f in P.search_path()],
            "presets": [{
                "name": e.name, "origin": e.origin, "path": str(e.path), "error": e.error,
                "shadowed_by": e.shadowed_by,
                "description": e.preset.description if e.preset else None,
                "model": e.preset.config.model.source if e.preset else None,
                "method": e.preset.config.setup.method if e.preset else None,
                "gpu": e.preset.constraints.gpu if e.preset else None,
                "evidence": e.preset.evidence is not None if e.preset else False,
            } for e in entries]}, indent=2))
        return 0
    from tuneplan.commands.terminal import fill, output_width, wrap

    width = output_width()
    print("Search order (first match wins):")
    for i, (origin, folder) in enumerate(P.search_path(), 1):
        state = "  (does not exist)" if not folder.is_dir() else ""
        print(fill(f"{origin:<8} {folder}{state}", width, f"  {i}. "))
    print()
    if not entries:
        print("No presets found.")
        return 0
    rows = [("NAME", "FROM", "MODEL", "METHOD", "MADE FOR", "DESCRIPTION")]
    for e in entries:
        p = e.preset
        origin = e.origin + (f" (hidden by {e.shadowed_by})" if e.shadowed_by else "")
        if p is None:
            rows.append((e.name, origin, "-", "-", "-", f"INVALID: {e.error}"))
            continue
        made = p.constraints.gpu or p.constraints.vram or "-"
        measured = " [measured]" if p.evidence is not None else ""
        rows.append((e.name, origin, p.config.model.source, p.config.setup.method, made, p.description + measured))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    table_w = sum(widths) + 2 * 5
    if width is None or table_w + 24 <= width:
        # one row per preset, the description wrapped in the last column
        for r in rows:
            head = "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  "
            lines = wrap(r[5], None if width is None else width - table_w)
            print(head + lines[0])
            for more in lines[1:]:
                print(" " * table_w + more)
    else:
        # too narrow for the table: one block per preset
        for r in rows[1:]:
            print(fill(f"{r[0]}  ({r[1]})", width))
            print(fill(f"{r[2]}, {r[3]}, made for {r[4]}", width, "    "))
            print(fill(r[5], width, "    "))
    print()
    print(fill("tuneplan plan --preset NAME [--gpu CARD | --vram SIZE]", width, "Use one: ", "  "))
    print(fill("tuneplan train --preset NAME", width, "         ", "  "))
    return 0


def _show(args: argparse.Namespace) -> int:
    from tuneplan.commands._output import _gib, warn_remote_code
    from tuneplan.services import presets as P

    preset = P.find_preset(args.name)
    print(f"# preset {preset.name}: {preset.origin}, {preset.path}")
    shadowed = [e for e in P.list_presets() if e.name == preset.name and e.path != preset.path]
    for e in shadowed:
        print(f"# (also found, hidden by this one: {e.origin}, {e.path})")
    ev = preset.evidence
    if ev is not None:
        bits = [f"run {ev.run}" if ev.run else None, f"on {ev.gpu_name}" if ev.gpu_name else None,
                f"peak {_gib(ev.peak_memory_bytes)}" if ev.peak_memory_bytes else None,
                f"{ev.tokens_per_second:,.0f} tokens/s" if ev.tokens_per_second else None,
                f"final loss {ev.final_loss:.4f}" if ev.final_loss is not None else None]
        print("# measured: " + ", ".join(b for b in bits if b))
    print()
    from tuneplan.files import CONFIG_MAX_BYTES, read_text_bounded

    print(read_text_bounded(preset.path, CONFIG_MAX_BYTES).rstrip() if preset.path else "")
    warn_remote_code(preset)
    return 0


def _save(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tuneplan.services import paths
    from tuneplan.services import presets as P

    root = paths.runs_root(args.runs_dir)
    run_dir = paths.resolve_run(args.run, root)
    folder = P.project_dir() if args.project else P.user_dir()
    others = [e for e in P.list_presets() if e.name == args.name and e.path.parent.resolve() != folder.resolve()]
    path = P.save_from_run(args.name, Path(run_dir), description=args.description, force=args.force, folder=folder)
    print(f"saved preset {args.name}: {path}")
    order = [o for o, _ in P.search_path()]
    mine = "project" if args.project else "user"
    for e in others:
        if e.origin in order and mine in order:
            where = "hides" if order.index(e.origin) > order.index(mine) else "is hidden by"
            print(f"  note: it {where} the {e.origin} preset of the same name ({e.path})", file=sys.stderr)
    print(f"  use it: tuneplan plan --preset {args.name}   tuneplan train --preset {args.name}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    from tuneplan.errors import UserError
    from tuneplan.services import presets as P

    preset = P.find_preset(args.name)
    P.deletable(preset)  # the user's own presets only (a path may name any preset file)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError(f"deleting preset {preset.name} ({preset.path}) needs confirmation: add --yes")
        answer = input(f"Delete preset {preset.name} ({preset.origin}: {preset.path})? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("kept it")
            return 0
    path = P.delete_preset(args.name)
    print(f"deleted preset {preset.name}: {path}")
    return 0
