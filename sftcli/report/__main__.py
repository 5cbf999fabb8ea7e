"""`python -m sftcli.report PATH...`: the report without the `sft` entry point."""

import sys

from sftcli.report import run_report

sys.exit(run_report(sys.argv[1:]))
