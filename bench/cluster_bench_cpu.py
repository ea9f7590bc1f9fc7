"""CPU accounting of ``cluster_bench.py``, from Linux's ``/proc``: who used the machine's cores
during a run. The parsing and the arithmetic are pure (tested in
``tests/unit/test_bench_cluster.py``); :func:`snapshot` is the only reader.

PostgreSQL runs as many processes: the postmaster, its auxiliary processes (checkpointer,
WAL writer...) and one backend per connection. Backends come and go during a run (other
engineers' tests connect to the same server), and a backend that exits takes its counters
with it — but the postmaster reaps every one of them, and the kernel adds a reaped child's
CPU to its parent's ``cutime``/``cstime``. So over a window, the CPU of all PostgreSQL
processes is exactly

    sum(utime + stime of every postgres process at the end)
  - sum(utime + stime of every postgres process at the start)
  + (cutime + cstime of each postmaster at the end - at the start)

whichever processes were born or died in between (a process that lived through the whole
window counts end - start; one that exited counts its total, via its parent, minus what it
had used by the start; one born and gone inside the window counts its total).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
POSTGRES = "postgres"
AUXILIARY = frozenset(
    {
        "checkpointer",
        "background writer",
        "walwriter",
        "autovacuum launcher",
        "logical replication launcher",
        "stats collector",
        "archiver",
        "startup",
    }
)
"""Process titles (after ``postgres: <cluster>:``) of server processes that no database
owns: their work is on behalf of every database of the server."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcStat:
    """The fields of one ``/proc/<pid>/stat`` line that the accounting uses (clock ticks)."""

    pid: int
    comm: str
    ppid: int
    start: int
    """Start time, ticks after boot: with ``pid``, names a process even if a pid is reused."""
    ticks: int
    """utime + stime: the process's own CPU, every thread of it."""
    child_ticks: int
    """cutime + cstime: CPU of its children that exited and were reaped."""

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start)


def parse_stat(line: str) -> ProcStat:
    """One ``/proc/<pid>/stat`` line. The command may hold spaces and parentheses, so it is
    cut at the first ``(`` and the last ``)``."""
    head, _, rest = line.partition(" (")
    comm, _, tail = rest.rpartition(") ")
    fields = tail.split()
    if not head.strip().isdigit() or len(fields) < 20:
        raise ValueError(f"not a /proc/<pid>/stat line: {line[:80]!r}")
    # fields[0] is field 3 of proc(5): state; utime is field 14, so fields[11].
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ProcStat(
        pid=int(head),
        comm=comm,
        ppid=int(fields[1]),
        start=int(fields[19]),
        ticks=utime + stime,
        child_ticks=cutime + cstime,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineTicks:
    """The first line of ``/proc/stat``: every CPU's time since boot, in ticks."""

    busy: int
    """user + nice + system + irq + softirq + steal (guest time is already in user)."""
    idle: int
    """idle + iowait."""

    @property
    def total(self) -> int:
        return self.busy + self.idle


def parse_machine(line: str) -> MachineTicks:
    name, *numbers = line.split()
    if name != "cpu" or len(numbers) < 8:
        raise ValueError(f"not the cpu line of /proc/stat: {line[:80]!r}")
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in numbers[:8])
    return MachineTicks(busy=user + nice + system + irq + softirq + steal, idle=idle + iowait)


def idle_share(before: MachineTicks, after: MachineTicks) -> float:
    """The share of all cores' time that went unused between the two readings."""
    total = after.total - before.total
    return (after.idle - before.idle) / total if total > 0 else float("nan")


def postgres_ticks(before: Iterable[ProcStat], after: Iterable[ProcStat]) -> int:
    """CPU ticks of every PostgreSQL process between two readings of the same set of
    processes (see the module's docstring)."""
    start, end = _postgres(before), _postgres(after)
    own = sum(p.ticks for p in end.values()) - sum(p.ticks for p in start.values())
    reaped = sum(
        end[key].child_ticks - start[key].child_ticks
        for key in start.keys() & end.keys()
        if _is_root(start[key], start)
    )
    return own + reaped


def ticks_of(
    before: Iterable[ProcStat], after: Iterable[ProcStat], keys: Iterable[tuple[int, int]]
) -> int:
    """CPU ticks used between the readings by the processes named by ``keys`` (a process
    missing from the start reading was born since: it counts from zero)."""
    start = {p.key: p for p in before}
    end = {p.key: p for p in after}
    used = 0
    for key in keys:
        if key in end:
            used += end[key].ticks - (start[key].ticks if key in start else 0)
    return used


def classify(title: str, database: str) -> str:
    """``"run"`` for a backend of ``database``, ``"server"`` for the postmaster and its
    auxiliary processes, ``"other"`` for backends of other databases (other people's work).

    A backend's title is ``postgres: <cluster>: <user> <database> <client> <activity>``."""
    if not title.startswith("postgres: "):
        return "server"  # the postmaster keeps its command line
    what = title.split(": ", 2)[-1].strip()
    words = what.split()
    if what in AUXILIARY or what.startswith("parallel worker"):
        return "server"
    if what.startswith("autovacuum worker"):
        return "run" if database in words[2:] else "other"
    return "run" if words[1:2] == [database] else "other"


def postgres_split(
    before: Iterable[ProcStat],
    after: Iterable[ProcStat],
    titles: Mapping[int, str],
    database: str,
) -> dict[str, int]:
    """Ticks of the live PostgreSQL processes by :func:`classify` class; CPU of processes
    that exited during the window is not attributed (it is in :func:`postgres_ticks`)."""
    end = list(_postgres(after).values())
    split = dict.fromkeys(("run", "server", "other"), 0)
    for group in split:
        keys = [p.key for p in end if classify(titles.get(p.pid, ""), database) == group]
        split[group] = ticks_of(before, after, keys)
    return split


def _postgres(stats: Iterable[ProcStat]) -> dict[tuple[int, int], ProcStat]:
    return {p.key: p for p in stats if p.comm == POSTGRES}


def _is_root(stat: ProcStat, among: Mapping[tuple[int, int], ProcStat]) -> bool:
    """A postmaster: a postgres process whose parent is not one."""
    return all(other.pid != stat.ppid for other in among.values())


# -- reading /proc --
@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    processes: list[ProcStat]
    """Every PostgreSQL process, and the processes asked for by pid."""
    titles: dict[int, str]
    """Command lines of the PostgreSQL processes (their process titles)."""
    machine: MachineTicks


def snapshot(pids: Iterable[int] = ()) -> Snapshot:
    """Read ``/proc``: all PostgreSQL processes, the given ones, and the machine's ticks."""
    wanted = set(pids)
    processes: list[ProcStat] = []
    titles: dict[int, str] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = parse_stat((entry / "stat").read_text(encoding="utf-8", errors="replace"))
            if stat.comm == POSTGRES:
                raw = (entry / "cmdline").read_bytes()
                titles[stat.pid] = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
            elif stat.pid not in wanted:
                continue
        except (OSError, ValueError):
            continue  # gone while we looked
        processes.append(stat)
    first = (PROC / "stat").read_text(encoding="ascii").split("\n", 1)[0]
    return Snapshot(processes=processes, titles=titles, machine=parse_machine(first))


def clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")
