"""`snakemake --lint` for CI: fails on every lint but the deliberate ones below, and when Snakemake cannot lint.

`snakemake --lint` exits 1 as soon as it prints a lint (Snakemake 9; `--lint json` is accepted but prints text), so
this script runs it, reads its text ("Lints for snakefile <path>:" or "Lints for rule <name> (line <n>, <path>):",
then one "    * <title>:" line per lint) and exits 0 only when every lint is in ACCEPTED. Run it from the repository
root: `python .ci/snakemake_lint.py` (it plans the default config; no job runs).
"""

import re
import subprocess
import sys

# (where, the lint's title up to its colon): the reason each is kept stands beside it.
ACCEPTED = {
    # The Snakefile sets PYTHONPATH for the jobs (`python -m memprune` from this checkout, installed or not); it is
    # never required from the user, so asserting it with `envvars:` would not apply.
    ("snakefile Snakefile", "Environment variable PYTHONPATH used but not asserted with envvars directive"),
}

SCOPE = re.compile(r"^Lints for (snakefile|rule) (\S+?)(?: \(line \d+, .*\))?:$")
ITEM = re.compile(r"^    \* (.*?)(?: in line \d+\.)?:$")


def lints(text: str) -> list[tuple[str, str]]:
    """(where, title) of every lint in `snakemake --lint`'s text: where is "snakefile <file name>" or "rule <name>"."""
    out, scope = [], None
    for line in text.splitlines():
        if m := SCOPE.match(line):
            kind, name = m.groups()
            scope = f"{kind} {name.rsplit('/', 1)[-1] if kind == 'snakefile' else name}"
        elif (m := ITEM.match(line)) and scope:
            out.append((scope, m.group(1)))
    return out


def unexpected(text: str) -> list[tuple[str, str]]:
    """The lints that ACCEPTED does not list."""
    return [lint for lint in lints(text) if lint not in ACCEPTED]


def main() -> int:
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    found = lints(text)
    if proc.returncode != 0 and not found:
        print(text, file=sys.stderr)
        print(".ci/snakemake_lint.py: snakemake --lint failed without a lint (above)", file=sys.stderr)
        return 1
    bad = unexpected(text)
    for where, title in found:
        print(f"snakemake --lint: {where}: {title}" + ("" if (where, title) in bad else " (accepted: see ACCEPTED)"))
    if bad:
        print(text, file=sys.stderr)
        print(f".ci/snakemake_lint.py: {len(bad)} lint(s) to fix, or to accept with a reason in ACCEPTED",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
