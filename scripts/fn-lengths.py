#!/usr/bin/env python3
"""Lists functions longer than a limit (default 80 lines) in the drivers.

Drivers are plumbing (docs/architecture.md): every function in
crates/*/src/{service,server,client}.rs should read on one screen.
Usage: scripts/fn-lengths.py [LIMIT]  -- exits 1 if any function is longer.
Counts lines from `fn` to its closing brace by brace depth (braces inside
strings and comments are counted too: good enough for this code).
"""
import glob
import re
import sys

limit = int(sys.argv[1]) if len(sys.argv) > 1 else 80
pattern = re.compile(r"\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?fn\s+(\w+)")
files = sorted(
    f
    for pat in ("crates/*/src/service.rs", "crates/*/src/server.rs", "crates/*/src/client.rs")
    for f in glob.glob(pat)
)
longest = 0
too_long = []
for path in files:
    lines = open(path, encoding="utf-8").read().split("\n")
    i = 0
    while i < len(lines):
        m = pattern.match(lines[i])
        if not m or lines[i].strip().startswith("//"):
            i += 1
            continue
        depth, opened, j = 0, False, i
        while j < len(lines):
            for ch in lines[j]:
                if ch == "{":
                    depth += 1
                    opened = True
                elif ch == "}":
                    depth -= 1
            if opened and depth == 0:
                break
            if not opened and lines[j].rstrip().endswith(";"):
                break
            j += 1
        n = j - i + 1
        if opened:
            longest = max(longest, n)
            if n > limit:
                too_long.append(f"{path}:{i + 1} fn {m.group(5)}: {n} lines")
        i = j + 1 if opened else i + 1
print(f"{len(files)} driver files; longest function {longest} lines (limit {limit})")
for line in too_long:
    print(line)
sys.exit(1 if too_long else 0)
