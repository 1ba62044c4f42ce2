"""`python -m prerank JOB ...` is the `prerank` command."""

from prerank.cli import main

raise SystemExit(main())
