"""Loaders: Conclave JSON lines, Jepsen EDN, Jepsen etcd logs; pairing rules; errors with file and line."""

from __future__ import annotations

import pytest

from conclave.verify.errors import HistoryError, UnknownNameError
from conclave.verify.formats import detect, dump_json_lines, load
from conclave.verify.history import Event, EventType, Status

JSONL = """\
{"process": 0, "type": "invoke", "f": "write", "value": 1}
{"process": 1, "type": "invoke", "f": "read", "value": null}
{"process": 0, "type": "ok", "f": "write", "value": 1}

{"process": 1, "type": "ok", "f": "read", "value": 1}
{"process": 2, "type": "invoke", "f": "cas", "value": [1, 2]}
{"process": 2, "type": "info", "f": "cas", "value": [1, 2]}
{"process": 3, "type": "invoke", "f": "write", "value": 3}
"""


def test_json_lines_pairs_invokes_with_completions() -> None:
    h = load(JSONL, "h.jsonl")
    assert h.format == "json"
    w, r, cas, open_write = h.operations
    assert (w.f, w.input, w.status, w.call, w.ret, w.call_line, w.ret_line) == ("write", 1, Status.OK, 0, 2, 1, 3)
    assert (r.f, r.output, r.status, r.call, r.ret) == ("read", 1, Status.OK, 1, 3)
    assert cas.input == (1, 2) and cas.status is Status.INFO and cas.ret is None and cas.output is None
    assert open_write.status is Status.INFO and open_write.ret is None  # still open at the end: indeterminate


def test_json_times_order_events_when_every_event_has_one() -> None:
    text = (
        '{"process": "a", "type": "invoke", "f": "get", "key": "k", "time": 50}\n'
        '{"process": "b", "type": "invoke", "f": "put", "key": "k", "value": "v", "time": 10}\n'
        '{"process": "b", "type": "ok", "f": "put", "key": "k", "value": "v", "time": 20}\n'
        '{"process": "a", "type": "ok", "f": "get", "key": "k", "value": "v", "time": 60}\n'
    )
    h = load(text, "t")
    assert h.timed
    put, get = h.operations  # sorted by call time, not by line
    assert (put.f, put.call, put.ret, put.key) == ("put", 10, 20, "k")
    assert (get.f, get.call, get.ret) == ("get", 50, 60)


def test_dump_json_lines_round_trips() -> None:
    events = [
        Event(1, 0, EventType.INVOKE, "cas", (1, 2), "x"),
        Event(2, 0, EventType.FAIL, "cas", (1, 2), "x"),
    ]
    h = load(dump_json_lines(events), "d")
    (op,) = h.operations
    assert (op.f, op.input, op.status, op.key) == ("cas", (1, 2), Status.FAIL, "x")


def test_edn_maps_with_keys_nemesis_and_vectors() -> None:
    text = (
        "{:process 0, :type :invoke, :f :append, :key \"0\", :value \"x 0 0 y\"}\n"
        "{:process :nemesis, :type :info, :f :start, :value nil}\n"
        "{:process 0, :type :ok, :f :append, :key \"0\", :value \"x 0 0 y\"}\n"
        "{:process 1 :type :invoke :f :cas :value [1 2] :time 5} ; a comment\n"
        "{:process 1, :type :fail, :f :cas, :value [1 2], :time 7}\n"
    )
    assert detect(text) == "edn"
    append, cas = load(text, "e").operations
    assert (append.key, append.input, append.process) == ("0", "x 0 0 y", 0)
    assert (cas.input, cas.status) == ((1, 2), Status.FAIL)


def test_flat_edn_lines_read_like_the_general_reader() -> None:
    flat = (
        '{:process 3, :type :invoke, :f :append, :key "0", :value "x 3 0 y"}\n'
        "{:process 4, :type :invoke, :f :read, :value nil}\n"
        '{:process 3, :type :ok, :f :append, :key "0", :value "x 3 0 y"}\n'
        "{:process 4, :type :ok, :f :read, :value -7}\n"
    )
    general = flat + "{:process 5, :type :invoke, :f :read}\n"  # a map the flat form does not cover
    assert load(flat, "f").operations == load(general, "f").operations[:2]


def test_edn_top_level_vector() -> None:
    text = "[{:process 0 :type :invoke :f :read :value nil}\n {:process 0 :type :ok :f :read :value #{1 2}}]\n"
    (op,) = load(text, "v", "edn").operations
    assert op.output == frozenset({1, 2})


def test_jepsen_etcd_log_tabs_and_spaces() -> None:
    text = (
        "some other log line\n"
        "INFO  jepsen.util - 2\t:invoke\t:cas\t[3 0]\n"
        "INFO  jepsen.util - 1   :invoke :read   nil\n"
        "INFO  jepsen.util - 2\t:fail\t:cas\t[3 0]\n"
        "INFO  jepsen.util - 1   :fail   :read   :timed-out\n"
        "INFO  jepsen.util - 4\t:invoke\t:write\t1\n"
        "INFO  jepsen.util - 4\t:info\t:write\t:timed-out\n"
    )
    assert detect(text) == "jepsen-etcd-log"
    cas, read, write = load(text, "j").operations
    assert (cas.f, cas.input, cas.status, cas.call_line) == ("cas", (3, 0), Status.FAIL, 2)
    assert (read.f, read.status, read.output) == ("read", Status.FAIL, None)
    assert (write.input, write.status, write.ret) == (1, Status.INFO, None)


@pytest.mark.parametrize(
    ("text", "fmt", "line", "words"),
    [
        ('{"process": 0, "type": "invoke", "f": "read"}\nnot json\n', None, 2, "not valid JSON"),
        ('{"process": 0, "type": "invoke", "f": "read"}\n[1, 2]\n', "json", 2, "JSON object"),
        ('{"process": 0, "type": "begin", "f": "read"}\n', None, 1, "'type' must be one of"),
        ('{"process": 0, "f": "read"}\n', None, 1, "missing field 'type'"),
        ('{"process": 0.5, "type": "invoke", "f": "read"}\n', None, 1, "'process'"),
        ('{"process": 0, "type": "ok", "f": "read", "value": 1}\n', None, 1, "no matching invoke"),
        (
            '{"process": 0, "type": "invoke", "f": "read"}\n{"process": 0, "type": "invoke", "f": "write"}\n',
            None,
            2,
            "has not completed",
        ),
        (
            '{"process": 0, "type": "invoke", "f": "read"}\n{"process": 0, "type": "ok", "f": "write"}\n',
            None,
            2,
            "does not match",
        ),
        (
            '{"process": 0, "type": "invoke", "f": "r", "time": 5}\n'
            '{"process": 0, "type": "ok", "f": "r", "time": 1}\n',
            None,
            2,
            "before its call",
        ),
        ('{"process": 0, "type": "invoke", "f": "r", "time": NaN}\n', None, 1, "finite number"),
        ("{:process 0, :type :invoke, :f :read, :value nil}\n{:process 0, :type :ok, :f\n", "edn", 2, "missing"),
        ('{:process 0, :type :invoke, :f :read, :value "abc}\n', "edn", 1, "unterminated"),
        ("{:process 0, :type :invoke, :f :read, :value}\n", "edn", 1, "even number"),
        ("[[[[" * 30 + "\n", "edn", 1, "nested too deeply"),
        ("INFO  jepsen.util - 2\t:invoke\t:cas\t[3 x]\n", None, 1, "cannot read the value"),
        ("INFO  jepsen.util - 2 :bogus\n", "jepsen-etcd-log", 1, "does not parse"),
    ],
)
def test_malformed_input_names_file_and_line(text: str, fmt: str | None, line: int, words: str) -> None:
    with pytest.raises(HistoryError) as err:
        load(text, "bad.txt", fmt)
    assert err.value.line == line
    assert str(err.value).startswith(f"bad.txt:{line}: ")
    assert words in str(err.value)


def test_unknown_format_is_a_clear_error() -> None:
    with pytest.raises(UnknownNameError, match="unknown history format"):
        load("", "x", "yaml")


def test_empty_input_is_an_empty_history() -> None:
    assert load("", "empty").operations == ()
    assert load("\n\n", "empty", "edn").operations == ()
