"""An example plug-in comparator, installed as entry point ``sorted-lines`` of group xwhep.comparators.

A plug-in is any callable ``(a: ResultContent, b: ResultContent, options: Validation)`` returning a
Verdict (or "valid"/"invalid"/"inconclusive", or a bool); a distribution declares it with
``[project.entry-points."xwhep.comparators"] my-name = "my_module:my_function"``.
"""

from __future__ import annotations

from collections import Counter

from common.schemas import Validation
from server.validation.comparators import Verdict
from server.validation.digest import ResultContent


def sorted_lines(a: ResultContent, b: ResultContent, options: Validation) -> Verdict:
    """For jobs that write lines in a nondeterministic order (threads, hash order): valid iff both
    results have the same return code and file names, every text file the same lines in any order
    (line endings aside) and every other file the same bytes."""
    if a.return_code != b.return_code or a.files.keys() != b.files.keys():
        return Verdict.INVALID
    for name, x in a.files.items():
        y = b.files[name]
        if x == y:
            continue
        try:
            lines_x, lines_y = x.decode().splitlines(), y.decode().splitlines()
        except UnicodeDecodeError:
            return Verdict.INVALID
        if Counter(lines_x) != Counter(lines_y):
            return Verdict.INVALID
    return Verdict.VALID
