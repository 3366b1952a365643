#!/usr/bin/env python3
"""The import graph between broker/src's top-level modules, and its circles.

An edge `a -> b` means a file of module `a` (broker/src/a.rs or a file under
broker/src/a/) names `crate::b` (in a `use` or in a path). A circle between
modules means neither can be read, tested or changed without the other:
the broker must have none (issue 18), so that its modules stack in layers.

Usage: scripts/module-graph.py [--edges] [--why] [SRC]
  --edges  print every edge (with --why: each edge's first place)
  SRC      the crate's src folder (default: broker/src)
Exits 1 if there is a circle, 0 otherwise.
"""

import os
import re
import sys

ROOT_FILES = {"lib.rs", "main.rs"}


def strip_comments(text):
    """Drops // comments and /* */ blocks (strings are kept: a `crate::`
    inside one is rare and would only add an edge to look at)."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def top_level_names(group):
    """The first segment of each path in a `{...}` use group."""
    names, depth, current = [], 0, ""
    for ch in group:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if depth == 0 and ch == ",":
            names.append(current)
            current = ""
        elif not (depth == 0 and ch in "{}"):
            current += ch if depth == 0 else ""
    names.append(current)
    out = []
    for n in names:
        m = re.match(r"\s*(\w+)", n)
        if m:
            out.append(m.group(1))
    return out


def group_at(text, start):
    """The text of the balanced `{...}` group starting at `start`."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return text[start:]


def references(text):
    """(module, offset) for every `crate::module` the text names."""
    for m in re.finditer(r"\bcrate::(\w+|\{)", text):
        if m.group(1) == "{":
            for name in top_level_names(group_at(text, m.start(1))[1:-1]):
                yield name, m.start()
        else:
            yield m.group(1), m.start()


def modules(src):
    """Top-level module name -> its files."""
    mods = {}
    for entry in sorted(os.listdir(src)):
        path = os.path.join(src, entry)
        if entry.endswith(".rs") and entry not in ROOT_FILES:
            mods.setdefault(entry[:-3], []).append(path)
        elif os.path.isdir(path) and entry != "bin":
            for dirpath, _, files in os.walk(path):
                for f in sorted(files):
                    if f.endswith(".rs"):
                        mods.setdefault(entry, []).append(os.path.join(dirpath, f))
    return mods


def graph(src):
    """Edges (a, b) -> the first place (file:line) that makes them."""
    mods = modules(src)
    edges = {}
    for mod, files in mods.items():
        for path in files:
            with open(path, encoding="utf-8") as f:
                text = strip_comments(f.read())
            for target, offset in references(text):
                if target != mod and target in mods and (mod, target) not in edges:
                    line = text.count("\n", 0, offset) + 1
                    edges[(mod, target)] = f"{os.path.relpath(path)}:{line}"
    return sorted(mods), edges


def circles(nodes, edges):
    """The strongly connected components of more than one module (Tarjan)."""
    succ = {n: sorted(b for (a, b) in edges if a == n) for n in nodes}
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for n in nodes:
        if n not in index:
            visit(n)
    return out


def main(argv):
    show_edges = "--edges" in argv
    why = "--why" in argv
    rest = [a for a in argv if not a.startswith("--")]
    src = rest[0] if rest else "broker/src"
    nodes, edges = graph(src)
    if show_edges:
        for (a, b), place in sorted(edges.items()):
            print(f"{a} -> {b}" + (f"  ({place})" if why else ""))
    found = circles(nodes, edges)
    for component in found:
        members = set(component)
        print("circle: " + " ".join(component))
        for (a, b), place in sorted(edges.items()):
            if a in members and b in members:
                print(f"  {a} -> {b}  ({place})")
    if not found:
        print(f"no circles among {len(nodes)} modules ({len(edges)} edges)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
