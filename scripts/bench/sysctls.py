"""The machine's settings a run of many threads and sockets needs, raised for
the run and put back after it.

Each `Need` names a setting (a file under /proc/sys), how much the run needs
of it, and why. `raised` checks each one: a setting already high enough is
left alone, one below the need is raised to it (root only), and on the way
out, normally, on an error, on Ctrl-C or SIGTERM, every setting it changed is
written back to the value it found. Only a SIGKILL of the driver leaves them
raised; the run's log says, as each is raised, the command that puts it back.

`Figure` is the same shape for what the run cannot raise (its process limits)
or need not (a setting it only reports): each is listed in the run's table
with what it needed, so that the table says what bound and what did not.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .servers import Fatal, say

PROC_SYS = Path("/proc/sys")


@dataclass
class Need:
    """A setting and what the run needs of it: at least `minimum`; when it is
    lower, it is raised to `raise_to` (at least the minimum: a round value
    with room, such as the one docs/deploying.md gives a deployment)."""

    name: str  # as sysctl names it: kernel.pid_max
    minimum: int
    why: str
    raise_to: int | str = 0  # a number, or the whole value for a setting of several (a range)
    found: str = ""  # the value before the run, as the file had it
    set_to: str = ""  # what the run wrote, if it changed it
    put_back: bool = False

    @property
    def path(self) -> Path:
        return PROC_SYS / self.name.replace(".", "/")

    def read(self) -> str:
        return self.path.read_text().strip()

    def write(self, value: str) -> None:
        self.path.write_text(f"{value}\n")

    def amount(self) -> int:
        """What the setting allows: its number, or for a range (ip_local_port_range) how many
        numbers it holds."""
        numbers = [int(v) for v in self.found.split()]
        return numbers[1] - numbers[0] + 1 if len(numbers) == 2 else numbers[0]

    def new_value(self) -> str:
        if isinstance(self.raise_to, str):
            return self.raise_to
        return str(max(self.minimum, self.raise_to))

    @property
    def binds(self) -> bool:
        return self.amount() < self.minimum

    def row(self) -> tuple[str, str, str, str]:
        """Setting, found, needed, what the run did: for the table."""
        if self.set_to:
            done = f"raised to {self.set_to}, " + ("put back" if self.put_back else "**not put back**")
        else:
            done = "left alone (enough)"
        return self.name, " ".join(self.found.split()), f"≥ {self.minimum:,} ({self.why})", done


@dataclass
class Figure:
    """A limit the run only checks: its value, what the run needs, whether it binds."""

    name: str
    value: str
    needed: str
    binds: bool

    def row(self) -> tuple[str, str, str, str]:
        return self.name, self.value, self.needed, "short: the run refuses" if self.binds else "enough"


def check_writable(needs: list[Need]) -> None:
    """Reads every setting; a setting below its need that this process may not
    raise (not root) is Fatal, with the command that would."""
    for need in needs:
        try:
            need.found = need.read()
        except OSError as error:
            raise Fatal(f"cannot read {need.path} ({error.strerror}): the rehearsal needs Linux's /proc/sys")
    short = [n for n in needs if n.binds]
    if short and os.geteuid() != 0:
        commands = "; ".join(f"sysctl -w {n.name}='{n.new_value()}'" for n in short)
        raise Fatal(f"not run: {', '.join(f'{n.name} is {n.found}, below {n.minimum:,}' for n in short)}, and only "
                    f"root may raise it (as root: {commands}; or run this as root, which raises them for the run and "
                    "puts them back)")


@contextmanager
def raised(needs: list[Need]) -> Iterator[list[Need]]:
    """Raises every setting of NEEDS below its minimum while the block runs, and
    puts each one back afterwards, whatever happened."""
    check_writable(needs)
    changed: list[Need] = []
    try:
        for need in needs:
            if not need.binds:
                continue
            value = need.new_value()
            try:
                need.write(value)
            except OSError as error:
                raise Fatal(f"could not raise {need.name} from {need.found} to {value} ({error.strerror})")
            need.set_to = value
            changed.append(need)
            say(f"raised {need.name} from {need.found} to {value} for the run ({need.why}); "
                f"if this run is killed, put it back with: sysctl -w {need.name}='{need.found}'")
        yield needs
    finally:
        for need in reversed(changed):
            try:
                need.write(need.found)
                need.put_back = need.read().split() == need.found.split()
            except OSError as error:
                say(f"warning: could not put {need.name} back to {need.found} ({error.strerror}): "
                    f"sysctl -w {need.name}='{need.found}'")
                continue
            say(f"put {need.name} back to {need.found}")
