"""The departure time window of SUMO demand files (routes, trips, flows), read without SUMO.

A city's demand rarely starts at t = 0: a 7:00-8:00 routes file departs its
vehicles between 25 200 s and 28 800 s, and a simulation started at 0 and run
for 20 minutes sees an empty network. :func:`read_routes_window` reads when a
demand file's traffic departs, and :meth:`RoutesWindow.expected_departures`
how many departures fall in a simulated window, so that a command can start the
twin where the traffic is and refuse a window with none.

Counted elements (top level of ``<routes>``): ``vehicle``, ``trip``, ``person``,
``container`` (their ``depart``), and ``flow``, ``personFlow``, ``containerFlow``
(``begin``/``end`` with ``number``, ``period`` (also ``exp(rate)``),
``vehsPerHour``/``personsPerHour``/``containersPerHour`` or ``probability``).
Times are seconds or SUMO's ``[D:]H:M:S``. Departures that are not a time
(``triggered``, ``begin``, ...) are counted as ``untimed``.

Parsing streams (``.gz`` too) through expat with DTDs, entity declarations and
external references refused, and with a bound on the number of elements, so an
untrusted or huge file costs bounded memory and time: it keeps one float per
timed vehicle and one tuple per flow.
"""

from __future__ import annotations

__all__ = [
    "MAX_ELEMENTS",
    "RoutesWindow",
    "clock",
    "parse_time",
    "read_routes_window",
    "traffic_start",
]

import gzip
import math
import re
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol
from xml.parsers import expat

from configs.errors import ConfigError

MAX_ELEMENTS: Final = 50_000_000
"""Elements read per file at most (a larger file is refused, naming the bound)."""

_SUMO_DEFAULT_FLOW_END_S: Final = 86_400.0  # SUMO: a flow without 'end' lasts 24 h
_SINGLE: Final = frozenset({"vehicle", "trip", "person", "container"})
_FLOWS: Final = frozenset({"flow", "personFlow", "containerFlow"})
_PER_HOUR: Final = ("vehsPerHour", "personsPerHour", "containersPerHour")
_EXP: Final = re.compile(r"^exp\(\s*([0-9.eE+-]+)\s*\)$")
_CHUNK: Final = 1 << 16


@dataclass(frozen=True)
class _Flow:
    begin_s: float
    end_s: float
    rate_per_s: float
    """Mean departures per second over [begin_s, end_s)."""


@dataclass(frozen=True)
class RoutesWindow:
    """When the traffic of one or more demand files departs.

    Attributes:
        paths: the files read.
        begin_s: earliest departure or flow begin (s); ``None`` when nothing timed departs.
        end_s: latest departure or flow end (s); ``None`` likewise.
        vehicles: timed single departures (vehicles, trips, persons, containers).
        flows: flows read.
        untimed: single departures without a time (``triggered``, ``begin``, ...).
    """

    paths: tuple[Path, ...]
    begin_s: float | None
    end_s: float | None
    vehicles: int
    flows: int
    untimed: int
    _departs: array[float] = field(repr=False, compare=False, default_factory=lambda: array("d"))
    _flows: tuple[_Flow, ...] = field(repr=False, compare=False, default=())

    @property
    def empty(self) -> bool:
        """True when no timed departure is in the files."""
        return self.begin_s is None

    def expected_departures(self, begin_s: float, end_s: float) -> float:
        """Departures expected in ``[begin_s, end_s)``: single ones plus flows' mean rate."""
        if end_s <= begin_s:
            return 0.0
        singles = bisect_left(self._departs, end_s) - bisect_left(self._departs, begin_s)
        flows = math.fsum(
            f.rate_per_s * max(0.0, min(end_s, f.end_s) - max(begin_s, f.begin_s))
            for f in self._flows
        )
        return singles + flows

    def describe(self) -> str:
        """The window as a person reads it, e.g. ``07:00:00-08:00:00 (25200-28800 s)``."""
        if self.begin_s is None or self.end_s is None:
            return "no timed departures"
        return f"{clock(self.begin_s)}-{clock(self.end_s)} ({self.begin_s:.0f}-{self.end_s:.0f} s)"


def clock(seconds: float) -> str:
    """``H:MM:SS`` of a simulation time (days roll over into hours: ``25:00:00``)."""
    total = max(0, math.floor(seconds))
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def parse_time(text: str) -> float | None:
    """A SUMO time value (``"25200"``, ``"25200.5"``, ``"7:00:00"``, ``"1:07:00:00"``).

    Returns:
        Seconds, or ``None`` when ``text`` is not a time (``"triggered"``, ``"begin"``).
    """
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        parts = value.split(":")
        if len(parts) not in (3, 4):
            return None
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            return None
        if len(numbers) == 3:
            numbers.insert(0, 0.0)
        days, hours, minutes, secs = numbers
        seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


class _Reader:
    """Expat handlers collecting departures from one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.depth = 0
        self.elements = 0
        self.departs: array[float] = array("d")
        self.flows: list[_Flow] = []
        self.untimed = 0

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        self.depth += 1
        self.elements += 1
        if self.elements > MAX_ELEMENTS:
            raise ConfigError(
                f"routes file {self.path} has more than {MAX_ELEMENTS} elements; split it"
            )
        if self.depth != 2:  # children of <routes> only (not a person's rides, say)
            return
        if tag in _SINGLE:
            depart = parse_time(attrs.get("depart", ""))
            if depart is None:
                self.untimed += 1
            else:
                self.departs.append(depart)
        elif tag in _FLOWS:
            self.flows.append(self._flow(tag, attrs))

    def end(self, tag: str) -> None:
        self.depth -= 1

    def refuse(self, *_: object) -> None:
        raise ConfigError(
            f"routes file {self.path} declares a DTD, entities or external references; "
            "routes files must not (remove the <!DOCTYPE ...> part)"
        )

    def _flow(self, tag: str, attrs: dict[str, str]) -> _Flow:
        where = f"routes file {self.path}: {tag} {attrs.get('id', '?')!r}"
        begin = parse_time(attrs.get("begin", "0"))
        if begin is None:
            raise ConfigError(f"{where}: 'begin' is not a time: {attrs.get('begin')!r}")
        rate = _flow_rate(attrs, where)
        number = _number(attrs, where)
        end_text = attrs.get("end")
        end = parse_time(end_text) if end_text is not None else None
        if end_text is not None and end is None:
            raise ConfigError(f"{where}: 'end' is not a time: {end_text!r}")
        if end is None:
            # SUMO: with 'number' and a rate, the flow ends when its number is out
            end = (
                begin + number / rate
                if number is not None and rate > 0
                else begin + _SUMO_DEFAULT_FLOW_END_S
            )
        if end < begin:
            raise ConfigError(f"{where}: 'end' {end:g} is before 'begin' {begin:g}")
        span = end - begin
        if number is not None:
            # 'number' over [begin, end): a rate caps it, else it is spread evenly
            expected = min(number, rate * span) if rate > 0 else float(number)
            rate = expected / span if span > 0 else 0.0
        return _Flow(begin_s=begin, end_s=end, rate_per_s=rate)


def _number(attrs: dict[str, str], where: str) -> int | None:
    text = attrs.get("number")
    if text is None:
        return None
    try:
        number = int(float(text))
    except ValueError as e:
        raise ConfigError(f"{where}: 'number' is not a number: {text!r}") from e
    if number < 0:
        raise ConfigError(f"{where}: 'number' must be >= 0 (got {number})")
    return number


def _flow_rate(attrs: dict[str, str], where: str) -> float:
    """Mean departures per second a flow's attributes ask for (0: none given)."""
    period = attrs.get("period")
    try:
        if period is not None:
            match = _EXP.match(period.strip())
            if match:
                return max(0.0, float(match.group(1)))
            value = float(period)
            return 1.0 / value if value > 0 else 0.0
        for key in _PER_HOUR:
            if key in attrs:
                return max(0.0, float(attrs[key]) / 3600.0)
        if "probability" in attrs:
            return min(1.0, max(0.0, float(attrs["probability"])))
    except ValueError as e:
        raise ConfigError(f"{where}: malformed rate attribute: {e}") from e
    return 0.0


def _read_one(path: Path) -> _Reader:
    reader = _Reader(path)
    parser = expat.ParserCreate()
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.StartDoctypeDeclHandler = reader.refuse
    parser.EntityDeclHandler = reader.refuse
    parser.ExternalEntityRefHandler = reader.refuse  # type: ignore[assignment]
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            _feed(parser, fh)
    except FileNotFoundError as e:
        raise ConfigError(f"routes file {path} does not exist") from e
    except expat.ExpatError as e:
        raise ConfigError(f"routes file {path} is not well-formed XML: {e}") from e
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise ConfigError(f"routes file {path} cannot be read: {e}") from e
    return reader


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def _feed(parser: expat.XMLParserType, fh: _Readable) -> None:
    while chunk := fh.read(_CHUNK):
        parser.Parse(chunk, False)
    parser.Parse(b"", True)


def read_routes_window(paths: Path | str | Iterable[Path | str]) -> RoutesWindow:
    """Read when the traffic of SUMO demand files departs.

    Args:
        paths: one routes/trips/flows file (``.xml`` or ``.xml.gz``) or several.

    Returns:
        The window over all files together.

    Raises:
        ConfigError: a file is missing, unreadable, not well-formed, declares a DTD
            or entities, has a malformed flow, or exceeds :data:`MAX_ELEMENTS`.
    """
    files: Sequence[Path] = (
        (Path(paths),) if isinstance(paths, str | Path) else tuple(Path(p) for p in paths)
    )
    departs: array[float] = array("d")
    flows: list[_Flow] = []
    untimed = 0
    for path in files:
        reader = _read_one(path)
        departs.extend(reader.departs)
        flows.extend(reader.flows)
        untimed += reader.untimed
    departs = array("d", sorted(departs))
    active = [f for f in flows if f.rate_per_s > 0 and f.end_s > f.begin_s]
    starts = [*departs[:1], *(f.begin_s for f in active)]
    ends = [*departs[-1:], *(f.end_s for f in active)]
    return RoutesWindow(
        paths=tuple(files),
        begin_s=min(starts) if starts else None,
        end_s=max(ends) if ends else None,
        vehicles=len(departs),
        flows=len(flows),
        untimed=untimed,
        _departs=departs,
        _flows=tuple(active),
    )


def traffic_start(
    window: RoutesWindow,
    begin_s: float | None,
    length_s: float,
    lights: int,
    key: str,
    begin_option: str = "--begin",
) -> int:
    """Where a simulation of ``window``'s demand starts: ``begin_s``, else the first departure.

    Args:
        window: the demand's departure window (:func:`read_routes_window`).
        begin_s: the start asked for, or None to start at the first departure.
        length_s: simulated seconds from the start (warm-up + horizon).
        lights: traffic lights simulated: less than one departure per light (and
            at least one) is "almost no traffic".
        key: the option or settings key that named the routes (for the message).
        begin_option: the option that sets the start (for the message).

    Returns:
        The start (s), on a whole second.

    Raises:
        ConfigError: the routes have no timed departure, or the simulated window
            has none or less than one per light; the message names the routes'
            window, the simulated one and what to change.
    """
    names = ", ".join(str(p) for p in window.paths)
    if window.begin_s is None:
        raise ConfigError(
            f"{key} {names}: no vehicle, trip, person or flow with a departure time; "
            "give a routes file with traffic"
        )
    first = math.floor(window.begin_s)
    start = first if begin_s is None else math.floor(begin_s)
    end = start + length_s
    expected = window.expected_departures(start, end)
    if expected < max(1, lights):
        how = (
            f"give {begin_option} {first} (the first departure) or leave {begin_option} out"
            if begin_s is not None and start != first
            else "simulate longer or give routes with more traffic"
        )
        raise ConfigError(
            f"{key} {names}: its traffic departs {window.describe()}, but the simulated window "
            f"is {clock(start)}-{clock(end)} ({start}-{end:.0f} s), in which {expected:.0f} "
            f"vehicles depart for {lights} traffic light{'' if lights == 1 else 's'} "
            f"(at least one per light is needed): {how}"
        )
    return start
