"""`tuneplan plan` run in this process, its stdout and stderr captured: the plan command tests'
one way to call it."""

from __future__ import annotations

import json

from tuneplan import cli


def run(capsys, *argv):
    """(exit code, stdout, stderr) of `tuneplan plan ARGV`."""
    code = cli.main(["plan", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def run_json(capsys, *argv):
    """(exit code, the parsed `--json` object, stderr) of `tuneplan plan ARGV --json`."""
    code, out, err = run(capsys, *argv, "--json")
    return code, json.loads(out), err
