"""Runs a command and writes its wall, user and system seconds and max RSS (KiB) to a file, as
`/usr/bin/time -f '%e %U %S %M' -o FILE` does: what benches/cpu-step.sh uses where GNU time
is not installed.

    rusage.py OUT_FILE COMMAND [ARG ...]
"""

import resource
import subprocess
import sys
import time


def main():
    out, command = sys.argv[1], sys.argv[2:]
    start = time.perf_counter()
    code = subprocess.call(command)
    wall = time.perf_counter() - start
    # Only this one child has been waited for, so the children's usage is its usage.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out, "w") as f:
        if code != 0:
            f.write(f"Command exited with non-zero status {code}\n")
        f.write(f"{wall:.2f} {usage.ru_utime:.2f} {usage.ru_stime:.2f} {usage.ru_maxrss}\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
