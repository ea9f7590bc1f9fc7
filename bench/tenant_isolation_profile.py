"""The node's profile for ``tenant_isolation_bench.py --profile-node``: the pyinstrument session
the node wrote on exit, rendered as HTML and text, and its self time summed by library, with
the top functions by self time and by inclusive time (each counted once per stack)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

Key = tuple[str, str, int]


def area(path: str) -> str:
    """Where a frame's code lives: a part of ours, a package, or the standard library."""
    if "saga_orchestrator/" in path:
        part = path.rsplit("saga_orchestrator/", 1)[1].split("/", 1)
        return "saga_orchestrator." + (part[0] if len(part) > 1 else part[0].removesuffix(".py"))
    if "site-packages/" in path:
        return path.rsplit("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/lib/python3" in path:
        module = path.rsplit("/lib/python3", 1)[1].split("/", 2)[1]
        return "stdlib " + module.removesuffix(".py")
    return "other" if path else "(no file: C code, waits)"


def summarize_profile(session_path: Path, html: Path, top: int) -> None:
    from pyinstrument.renderers import ConsoleRenderer, HTMLRenderer
    from pyinstrument.session import Session

    session = Session.load(str(session_path))
    html.parent.mkdir(parents=True, exist_ok=True)
    html.write_text(HTMLRenderer().render(session), encoding="utf-8")
    text = html.with_suffix(".txt")
    text.write_text(ConsoleRenderer(unicode=False, color=False).render(session), encoding="utf-8")
    print(f"\nnode profile: {html}, call tree: {text}")
    root = session.root_frame()
    if root is not None:
        print_summary(root, top)


def print_summary(root: Any, top: int) -> None:
    by_area: defaultdict[str, float] = defaultdict(float)
    by_self: defaultdict[Key, float] = defaultdict(float)
    inclusive: defaultdict[Key, float] = defaultdict(float)
    pending: list[tuple[Any, frozenset[Key]]] = [(root, frozenset())]
    while pending:
        frame, above = pending.pop()
        path = str(frame.file_path or "")
        key = (str(frame.function), path, int(frame.line_no or 0))
        if not frame.is_synthetic:  # a synthetic child's time is in its parent's self time
            by_area[area(path)] += float(frame.total_self_time)
            by_self[key] += float(frame.total_self_time)
        if key not in above:
            inclusive[key] += float(frame.time)
        pending.extend((child, above | {key}) for child in frame.children)
    total = float(root.time) or 1.0
    print(f"\nself time by area (% of {total:.2f}s sampled on the node's event-loop thread):")
    for name, seconds in sorted(by_area.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {seconds / total * 100:5.1f}%  {name}")
    print_top(f"top {top} functions by self time:", by_self, total, top)
    ours = {k: v for k, v in inclusive.items() if "saga_orchestrator/" in k[1]}
    print_top(f"top {top} of our functions by inclusive time:", ours, total, top)


def print_top(title: str, seconds: dict[Key, float], total: float, top: int) -> None:
    print(f"\n{title}")
    for (function, path, line), spent in sorted(seconds.items(), key=lambda kv: -kv[1])[:top]:
        where = path.rsplit("site-packages/", 1)[-1].split("saga_orchestrator/", 1)[-1]
        where = where.rsplit("/lib/python3.11/", 1)[-1]
        print(f"  {spent / total * 100:5.1f}%  {function:<32} {where}:{line}")
