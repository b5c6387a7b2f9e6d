"""Run CrypTen unit tests (unittest ids: ``test.test_binary``, ``test.test_mpc.TestTFP``, ...) and
append one line per finished test to ``--out``: ``outcome seconds id | last line of the failure``.

A line is written (and flushed) as each test ends, so a run cut short by a wall budget still
leaves every finished test's result behind. unittest, not pytest: CrypTen's MultiProcessTestCase
swaps its test methods in ``setUpClass``, which pytest's unittest integration bypasses (the method
would run in the parent process, outside any session)."""
from __future__ import annotations

import argparse
import sys
import time
import unittest


class LineResult(unittest.TextTestResult):
    def __init__(self, out, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.out = out

    def startTest(self, test):
        self.t0 = time.monotonic()
        super().startTest(test)

    def _line(self, outcome, test, err=None):
        why = ""
        if err is not None:
            text = self._exc_info_to_string(err, test).strip().splitlines()
            # the parties' tracebacks are inside the assertion message: report the last real error
            errs = [ln.strip() for ln in text if ln.strip() and not ln.startswith((" ", "~", "=", "*", "Traceback"))]
            why = " | " + (errs[-1] if errs else text[-1])[:300]
        self.out.write(f"{outcome} {time.monotonic() - self.t0:.1f} {test.id()}{why}\n")
        self.out.flush()

    def addSuccess(self, test):
        super().addSuccess(test)
        self._line("ok", test)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._line("FAIL", test, err)

    def addError(self, test, err):
        super().addError(test, err)
        self._line("ERROR", test, err)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.out.write(f"skip 0.0 {test.id()} | {reason}\n")
        self.out.flush()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ids", nargs="+", help="unittest ids")
    ap.add_argument("--out", required=True, help="file to append one line per test to")
    args = ap.parse_args(argv)
    suite = unittest.defaultTestLoader.loadTestsFromNames(args.ids)
    with open(args.out, "a") as out:
        runner = unittest.TextTestRunner(verbosity=2, resultclass=lambda *a, **k: LineResult(out, *a, **k))
        result = runner.run(suite)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
