#!/usr/bin/env python3
"""test-summary.py BUILD_DIR... — adds up meson's testlog.json of each build
(and the fuzz stage's count, from FUZZ_TARGETS) into the closing line CI
reads: 'calibd: N passed, N failed, N skipped'."""
import json
import os
import sys

passed = failed = skipped = 0
for d in sys.argv[1:]:
    path = os.path.join(d, "meson-logs", "testlog.json")
    if not os.path.exists(path):
        continue
    for line in open(path):
        r = json.loads(line).get("result")
        if r in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif r == "SKIP":
            skipped += 1
        else:
            failed += 1
passed += int(os.environ.get("FUZZ_TARGETS", "0"))
print(f"calibd: {passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)
