"""`python -m services.supervised <launcher pid> <module>`: run `module` as __main__, after
arranging to receive SIGTERM when the launcher dies (services/supervisor.py).
`python -m services.supervised <launcher pid> --exec <program> [args...]` does the same for
a program, found on PATH like a shell would (the tie survives exec)."""

from __future__ import annotations

import os
import runpy
import sys

from services.supervisor import die_with_parent

if __name__ == "__main__":
    parent, target = int(sys.argv[1]), sys.argv[2]
    die_with_parent(parent)
    if target == "--exec":
        os.execvp(sys.argv[3], sys.argv[3:])
    sys.argv = [target]
    runpy.run_module(target, run_name="__main__", alter_sys=True)
