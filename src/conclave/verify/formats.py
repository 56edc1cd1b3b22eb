"""History loaders: text in, ``History`` out, with file:line errors.

Theory of operation. Each loader parses one text format into ``Event`` values
and hands them to ``build_history``; ``detect`` guesses the format from the
first meaningful line. Formats:

* ``json``: Conclave's JSON-lines format (docs/history-format.md): one object per
  line with ``process``, ``type`` (invoke/ok/fail/info), ``f``, optional ``key``,
  ``value`` and ``time``.
* ``edn``: Jepsen-style EDN maps, ``{:process 0, :type :invoke, :f :read, :value nil}``
  with optional ``:key`` and ``:time``; a top-level vector of maps also works.
  Events of a non-numeric process (``:nemesis``) are skipped.
* ``porcupine-kv``: the per-key kv logs of Porcupine's test data; a subset of EDN
  read by the same reader.
* ``jepsen-etcd-log``: ``INFO jepsen.util - PROC :TYPE :FN VALUE`` lines of the
  Jepsen etcd test (Porcupine's test data); other log lines are skipped.

Pure: loaders take text, never paths. Keywords become plain strings (``:read`` is
``"read"``); vectors and lists become tuples.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator

from conclave.verify.errors import HistoryError, UnknownNameError
from conclave.verify.history import Event, EventType, History, Value, build_history, freeze

FORMATS = ("json", "edn", "jepsen-etcd-log", "porcupine-kv")

_TYPES = {t.value: t for t in EventType}


def detect(text: str) -> str:
    """Name the format of ``text``: the first line that looks like an event decides."""
    for raw in text.splitlines():
        line = raw.strip()
        if "jepsen.util" in line:
            return "jepsen-etcd-log"
        if line.startswith(("{:", "[{:", "[", "#{")) or (line.startswith("{") and ":type" in line):
            return "edn"
        if line.startswith("{"):
            return "json"
    return "json"


def load(text: str, source: str, fmt: str | None = None) -> History:
    """Parse ``text`` (from ``source``, a name used in errors) as ``fmt`` or the detected format."""
    name = fmt or detect(text)
    loader = _LOADERS.get(name)
    if loader is None:
        raise UnknownNameError(f"unknown history format {name!r}; choose one of {', '.join(FORMATS)}")
    return build_history(loader(text, source), source, name)


# --- JSON lines -------------------------------------------------------------------------------------------------


def _json_events(text: str, source: str) -> Iterator[Event]:
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise HistoryError(source, lineno, f"not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise HistoryError(source, lineno, "each line must be a JSON object")
        yield _event_from_map(obj, source, lineno)


def _event_from_map(obj: dict[str, object], source: str, lineno: int) -> Event:
    for field in ("process", "type", "f"):
        if field not in obj:
            raise HistoryError(source, lineno, f"missing field {field!r}")
    process = obj["process"]
    if isinstance(process, bool) or not isinstance(process, int | str):
        raise HistoryError(source, lineno, f"'process' must be an integer or a string, not {process!r}")
    etype = _TYPES.get(str(obj["type"]))
    if etype is None or not isinstance(obj["type"], str):
        raise HistoryError(source, lineno, f"'type' must be one of invoke, ok, fail, info, not {obj['type']!r}")
    f = obj["f"]
    if not isinstance(f, str) or not f:
        raise HistoryError(source, lineno, f"'f' must be a non-empty string, not {f!r}")
    time = obj.get("time")
    if time is not None and (isinstance(time, bool) or not isinstance(time, int | float) or not math.isfinite(time)):
        raise HistoryError(source, lineno, f"'time' must be a finite number, not {time!r}")
    key = freeze(obj.get("key"))
    try:
        hash(key)
    except TypeError:
        raise HistoryError(source, lineno, f"'key' must be hashable, not {key!r}") from None
    return Event(lineno, process, etype, f, freeze(obj.get("value")), key, None if time is None else float(time))


# --- EDN --------------------------------------------------------------------------------------------------------


class _EdnReader:
    """A small EDN reader: maps, vectors, lists, sets, strings, keywords, numbers, nil/true/false."""

    _DELIMS = frozenset(" \t\r\n,{}[]()\";")
    _ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r", "/": "/"}
    _DEPTH_MAX = 64

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.pos = 0
        self.line = 1

    def fail(self, message: str) -> HistoryError:
        return HistoryError(self.source, self.line, message)

    def skip_space(self) -> None:
        text, n = self.text, len(self.text)
        while self.pos < n:
            c = text[self.pos]
            if c == "\n":
                self.line += 1
                self.pos += 1
            elif c in " \t\r,":
                self.pos += 1
            elif c == ";":
                while self.pos < n and text[self.pos] != "\n":
                    self.pos += 1
            else:
                return

    def at_end(self) -> bool:
        self.skip_space()
        return self.pos >= len(self.text)

    def read(self, depth: int = 0) -> Value:
        if depth > self._DEPTH_MAX:
            raise self.fail("EDN nested too deeply")
        self.skip_space()
        if self.pos >= len(self.text):
            raise self.fail("unexpected end of input")
        c = self.text[self.pos]
        if c == "{":
            self.pos += 1
            items = self.read_seq("}", depth)
            if len(items) % 2:
                raise self.fail("a map needs an even number of forms")
            out: dict[Value, Value] = {}
            for i in range(0, len(items), 2):
                out[items[i]] = items[i + 1]
            return out
        if c == "[":
            self.pos += 1
            return tuple(self.read_seq("]", depth))
        if c == "(":
            self.pos += 1
            return tuple(self.read_seq(")", depth))
        if c == "#":
            if self.text.startswith("#{", self.pos):
                self.pos += 2
                return frozenset(self.read_seq("}", depth))
            self.pos += 1
            self.read_token()  # a tag such as #inst or #uuid: keep the tagged value itself
            return self.read(depth + 1)
        if c == '"':
            return self.read_string()
        if c in "}])":
            raise self.fail(f"unexpected {c!r}")
        return self.read_atom()

    def read_seq(self, close: str, depth: int) -> list[Value]:
        items: list[Value] = []
        opened = self.line
        while True:
            self.skip_space()
            if self.pos >= len(self.text):
                raise HistoryError(self.source, opened, f"missing {close!r} for the form opened here")
            if self.text[self.pos] == close:
                self.pos += 1
                return items
            items.append(self.read(depth + 1))

    def read_string(self) -> str:
        text, n = self.text, len(self.text)
        self.pos += 1
        parts: list[str] = []
        start = self.pos
        opened = self.line
        while self.pos < n:
            c = text[self.pos]
            if c == '"':
                parts.append(text[start : self.pos])
                self.pos += 1
                return "".join(parts)
            if c == "\\":
                parts.append(text[start : self.pos])
                esc = text[self.pos + 1 : self.pos + 2]
                if esc not in self._ESCAPES:
                    raise self.fail(f"unknown string escape \\{esc}")
                parts.append(self._ESCAPES[esc])
                self.pos += 2
                start = self.pos
                continue
            if c == "\n":
                self.line += 1
            self.pos += 1
        raise HistoryError(self.source, opened, "unterminated string")

    def read_token(self) -> str:
        start = self.pos
        text, n = self.text, len(self.text)
        while self.pos < n and text[self.pos] not in self._DELIMS:
            self.pos += 1
        return text[start : self.pos]

    def read_atom(self) -> Value:
        tok = self.read_token()
        if not tok:
            raise self.fail(f"unexpected {self.text[self.pos]!r}")
        if tok == "nil":
            return None
        if tok == "true":
            return True
        if tok == "false":
            return False
        if tok.startswith(":"):
            return tok[1:]
        num = tok[:-1] if tok[-1] in "NM" else tok
        try:
            return int(num)
        except ValueError:
            pass
        try:
            return float(num)
        except ValueError:
            pass
        return tok  # a symbol


# The flat one-map-per-line shape of most Jepsen and Porcupine histories, read without the general reader.
_EDN_FLAT = re.compile(
    r'\{:process (\d+), :type :(invoke|ok|fail|info), :f :([\w-]+), (?::key "([^"\\]*)", )?'
    r':value (nil|-?\d+|"[^"\\]*")\}'
)


def _edn_flat_events(text: str) -> list[Event] | None:
    """Events of a history whose every line is a flat map (see ``_EDN_FLAT``), else None."""
    events = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        m = _EDN_FLAT.fullmatch(line)
        if m is None:
            return None
        proc, etype, f, key, raw_value = m.groups()
        value: Value = None if raw_value == "nil" else raw_value[1:-1] if raw_value[0] == '"' else int(raw_value)
        events.append(Event(lineno, int(proc), _TYPES[etype], f, value, key))
    return events


def _edn_events(text: str, source: str) -> Iterator[Event]:
    flat = _edn_flat_events(text)
    if flat is not None:
        yield from flat
        return
    reader = _EdnReader(text, source)
    while not reader.at_end():
        lineno = reader.line
        form = reader.read()
        maps = form if isinstance(form, tuple) else (form,)
        for m in maps:
            if not isinstance(m, dict):
                raise HistoryError(source, lineno, f"expected an operation map, found {m!r}")
            ev = _edn_event(m, source, lineno)
            if ev is not None:
                yield ev


def _edn_event(m: dict[Value, Value], source: str, lineno: int) -> Event | None:
    process = m.get("process")
    if isinstance(process, str) and "process" in m:
        return None  # :nemesis and other non-client processes
    fields: dict[str, object] = {str(k): v for k, v in m.items()}
    return _event_from_map(fields, source, lineno)


# --- Jepsen etcd log --------------------------------------------------------------------------------------------

_ETCD_LINE = re.compile(
    r"^INFO\s+jepsen\.util\s+-\s+(\d+)\s+:(invoke|ok|fail|info)\s+:([A-Za-z][\w-]*)\s+(.*?)\s*$"
)
_ETCD_OP_HINT = re.compile(r"^INFO\s+jepsen\.util\s+-\s+\d+\s")
_ETCD_PAIR = re.compile(r"^\[\s*(-?\d+|nil)\s+(-?\d+|nil)\s*\]$")


def _etcd_value(raw: str) -> Value:
    """nil, an integer, [A B] or :timed-out (unknown: None); ValueError otherwise."""
    if raw in ("nil", ":timed-out"):
        return None
    pair = _ETCD_PAIR.match(raw)
    if pair:
        return tuple(None if g == "nil" else int(g) for g in pair.groups())
    return int(raw)


def _etcd_events(text: str, source: str) -> Iterator[Event]:
    for lineno, raw in enumerate(text.splitlines(), start=1):
        m = _ETCD_LINE.match(raw)
        if m is None:
            if _ETCD_OP_HINT.match(raw):
                raise HistoryError(source, lineno, "an operation line of the Jepsen log that does not parse")
            continue  # other log output
        proc, etype, f, raw_value = m.groups()
        try:
            value = _etcd_value(raw_value)
        except ValueError:
            raise HistoryError(source, lineno, f"cannot read the value {raw_value!r}") from None
        yield Event(lineno, int(proc), _TYPES[etype], f, value)


_LOADERS: dict[str, Callable[[str, str], Iterator[Event]]] = {
    "json": _json_events,
    "edn": _edn_events,
    "porcupine-kv": _edn_events,
    "jepsen-etcd-log": _etcd_events,
}


def dump_json_lines(events: Iterator[Event] | list[Event]) -> str:
    """Write events in Conclave's JSON-lines format (the inverse of the ``json`` loader)."""
    lines = []
    for ev in events:
        obj: dict[str, object] = {"process": ev.process, "type": ev.type.value, "f": ev.f}
        if ev.key is not None:
            obj["key"] = _thaw(ev.key)
        obj["value"] = _thaw(ev.value)
        if ev.time is not None:
            obj["time"] = ev.time
        lines.append(json.dumps(obj))
    return "\n".join(lines) + ("\n" if lines else "")


def _thaw(value: Value) -> object:
    if isinstance(value, tuple | frozenset):
        return [_thaw(v) for v in value]
    return value


__all__ = ["FORMATS", "detect", "dump_json_lines", "load"]
