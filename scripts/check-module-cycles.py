#!/usr/bin/env python3
"""Fails when a module imports a module that imports it back, directly or through others.

For every crate under crates/, each source file is a module; an edge A -> B is a path in A that
names B: `crate::b::..`, `super::b::..` / `super::Item` (the parent), `self::b` or `b::..` for a
child `b` declared in A, and `crate::Item` re-exported by lib.rs from module B. A parent's
`mod b;` declaration and its re-exports (`pub use b::Item`, a facade) are not imports. Test modules (`#[cfg(test)]` blocks and files under
tests/) are left out: they may look anywhere. Prints each cycle and exits 1 if there is one.

    python3 scripts/check-module-cycles.py            # all crates
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_tests(text):
    """The text without `#[cfg(test)] mod x { .. }` blocks and comments."""
    text = re.sub(r"//[^\n]*", "", text)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def module_files(src):
    """Module path (tuple) -> file, for a crate's src/."""
    mods = {}
    for f in src.rglob("*.rs"):
        rel = f.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] in ("lib", "main", "mod"):
            parts = parts[:-1]
        mods[tuple(parts)] = f
    return mods


def use_paths(text):
    """Every path used: `use a::{b, c::d}` expanded, and inline `a::b::c` paths. A `pub use`
    (a re-export: the module's face, not something its code needs) is not counted."""
    paths = []
    for m in re.finditer(r"(?<!pub )(?<!pub\(crate\) )\buse\s+([^;]+);", text):
        paths += expand(m.group(1).replace("\n", " ").replace(" ", ""))
    for m in re.finditer(rf"\b((?:crate|super|self)(?:::{IDENT})+)", text):
        paths.append(m.group(1).split("::"))
    return paths


def expand(tree):
    """`a::{b,c::{d,e}}` -> [[a,b],[a,c,d],[a,c,e]]."""
    m = re.match(r"^([^{]*)\{(.*)\}$", tree)
    if not m:
        return [[p for p in re.sub(r"\bas\b.*", "", tree).split("::") if p]]
    prefix = [p for p in m.group(1).split("::") if p]
    items, depth, cur = [], 0, ""
    for ch in m.group(2):
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    items.append(cur)
    return [prefix + sub for it in items if it for sub in expand(it)]


def resolve(path, here, mods, reexports, children):
    """The module a path names, seen from module `here`, or None (an outside crate, std)."""
    if not path:
        return None
    if path[0] == "crate":
        base, rest = (), path[1:]
    elif path[0] == "super":
        base, rest = here[:-1], path[1:]
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
    elif path[0] == "self":
        base, rest = here, path[1:]
    elif path[0] in children.get(here, ()):
        base, rest = here, path
    else:
        return None
    target = base
    for p in rest:
        if target + (p,) in mods:
            target = target + (p,)
        else:
            break
    if target == () and rest and rest[0] in reexports:
        target = reexports[rest[0]]
    return target


def check_crate(src):
    mods = module_files(src)
    texts = {m: strip_tests(f.read_text()) for m, f in mods.items()}
    children = {m: set(re.findall(rf"\bmod\s+({IDENT})\s*;", t)) for m, t in texts.items()}
    reexports = {}
    for m in re.finditer(r"\bpub\s+use\s+([^;]+);", texts.get((), "")):
        for p in expand(m.group(1).replace("\n", " ").replace(" ", "")):
            if len(p) >= 2 and (p[0],) in mods:
                reexports[p[-1]] = (p[0],)
    edges = {m: set() for m in mods}
    for m, t in texts.items():
        for p in use_paths(t):
            target = resolve(p, m, mods, reexports, children)
            if target is not None and target != m and target in mods:
                edges[m].add(target)
    # Import cycles: strongly connected components (Tarjan).
    index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in mods:
        if v not in index:
            visit(v)
    return mods, edges, sccs


def main():
    bad = 0
    total_edges = 0
    for src in sorted(ROOT.glob("crates/*/src")):
        mods, edges, sccs = check_crate(src)
        total_edges += sum(len(e) for e in edges.values())
        for comp in sccs:
            bad += 1
            names = sorted("::".join(c) or "(crate root)" for c in comp)
            print(f"{src.parent.name}: import cycle among {', '.join(names)}")
            for a in comp:
                for b in edges[a]:
                    if b in comp:
                        print(f"    {'::'.join(a) or '(root)'} -> {'::'.join(b) or '(root)'}")
    print(f"module import cycles: {bad} ({total_edges} import edges checked)")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
