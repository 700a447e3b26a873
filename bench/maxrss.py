"""Run a command and write its own peak RSS (kB) and CPU seconds to a file: ``python -S maxrss.py OUT CMD...``.

The file holds one line: ``<peak RSS kB> <user CPU s> <system CPU s>``.

Why a wrapper: Linux carries the parent's memory high-water mark into a child's ``ru_maxrss``
when the child is forked from a large process and then execs (the pre-exec copy of the parent's
address space counts). The benchmark process holds the corpus, so measuring its children directly
would report its own size. This small process forks the tool instead: the floor is this wrapper's
few megabytes. Only the standard library's ``os``/``sys`` are used (run with ``-S``).
"""

import os
import sys


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    with open(out, "w") as f:
        f.write(f"{usage.ru_maxrss} {usage.ru_utime:.3f} {usage.ru_stime:.3f}")
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


if __name__ == "__main__":
    raise SystemExit(main())
