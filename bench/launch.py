"""Run one command and write its own resource usage as JSON: ``python -S launch.py USAGE.json LIMIT -- CMD...``.

Why a launcher: Linux carries a process's resident size across fork and exec into its children's peak
(``ru_maxrss``): a child forked from a 1.5 GB benchmark driver reported 1.5 GB for a 300 MB job (measured).
This small interpreter (standard library only, run with ``-S``) forks the real command instead, so the peak
that ``wait4`` reports is the command's own. ``LIMIT``: an address-space cap in bytes (0: none), inherited.
"""

import json
import os
import resource
import subprocess
import sys


def main() -> int:
    usage_file, limit, separator, *command = sys.argv[1:]
    assert separator == "--" and command, __doc__
    if int(limit):
        resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with open(usage_file, "w") as out:
        json.dump({"code": code, "maxrss_kb": usage.ru_maxrss, "user": usage.ru_utime, "system": usage.ru_stime},
                  out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
