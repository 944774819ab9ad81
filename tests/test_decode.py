"""checkpoints.decode on real LangGraph rows and on LangGraph's own serializer output.

Graphs run once per module through PostgresSaver and SqliteSaver (the shared
scenarios plus a graph whose state holds messages, datetime, UUID, Decimal, a
set, bytes, a dataclass, a pydantic model and a numpy array, a DeltaChannel
graph and the same rich graph written through EncryptedSerializer); the tests
read the raw rows back with SQL and decode them.
"""

import dataclasses
import json
import pathlib
import re
import sqlite3
import sys
import uuid
from collections import deque, namedtuple
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from ipaddress import IPv4Address
from typing import Annotated, Any, TypedDict
from zoneinfo import ZoneInfo

import ormsgpack
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Interrupt, Send
from psycopg.rows import dict_row
from pydantic import BaseModel

from checkpoints import decode
from checkpoints.decode import (
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_STRING,
    decode_json_text,
    find_references,
    is_encrypted,
    is_undecodable,
    iter_strings,
    references_in,
    safe_loads,
    summarize,
)
from tests.graphs import run_scenarios
from tests.pg import server_url, url_for_database

try:
    import numpy as np
except ImportError:  # the numpy case is skipped, the rest still runs
    np = None

SERDE = JsonPlusSerializer()
KEY = b"0123456789abcdef0123456789abcdef"
WRONG_KEY = b"fedcba9876543210fedcba9876543210"
FILE_URI = "s3://bucket/uploads/u1/report.pdf"

# ---- what the audit hook sees while decoding -------------------------------------------

_AUDIT = {"on": False, "events": []}
_WATCHED = ("import", "pickle.find_class", "os.system", "subprocess.Popen", "exec", "os.exec", "ctypes.dlopen")


def _audit(event, args):
    if _AUDIT["on"] and event.startswith(_WATCHED):
        _AUDIT["events"].append((event, str(args[0]) if args else ""))


sys.addaudithook(_audit)  # inert unless a test turns it on


@contextmanager
def watching():
    _AUDIT["events"] = []
    _AUDIT["on"] = True
    try:
        yield _AUDIT["events"]
    finally:
        _AUDIT["on"] = False


# ---- a graph whose state holds the types LangGraph serializes with extensions ------------

HUMAN_TEXT = "What is the total of invoice 42?"
AI_TEXT = "Invoice 42 totals 12.50 EUR."
WHEN = datetime(2026, 11, 23, 9, 30, 15, 123456, tzinfo=UTC)
UID = uuid.UUID("0b5e2a4c-8d1e-4f7a-9c3b-2d6e8f1a0b4c")
AMOUNT = Decimal("12.50")
TAGS = {"urgent", "billing", "eu"}
PAYLOAD = bytes(range(256)) * 3
NOTE = "plain text stays inline in PostgreSQL"


@dataclass
class Invoice:
    number: str
    total: Decimal
    lines: list


class Customer(BaseModel):
    name: str
    email: str
    joined: datetime


INVOICE = Invoice(number="INV-42", total=AMOUNT, lines=["widget", "gadget"])
CUSTOMER = Customer(name="Ada Lovelace", email="ada@example.com", joined=WHEN)


class RichState(TypedDict, total=False):
    messages: Annotated[list, add_messages]
    when: datetime
    uid: uuid.UUID
    amount: Decimal
    tags: set
    payload: bytes
    invoice: Invoice
    customer: Customer
    matrix: Any
    note: str


def _matrix():
    return np.arange(6, dtype=np.float64).reshape(2, 3)


def _rich(state: RichState):
    update = {
        "messages": [AIMessage(AI_TEXT, tool_calls=[{"name": "lookup", "args": {"invoice": 42}, "id": "call-1"}])],
        "when": WHEN,
        "uid": UID,
        "amount": AMOUNT,
        "tags": set(TAGS),
        "payload": PAYLOAD,
        "invoice": INVOICE,
        "customer": CUSTOMER,
        "note": NOTE,
    }
    if np is not None:
        update["matrix"] = _matrix()
    return update


def rich_graph(saver):
    g = StateGraph(RichState)
    g.add_node("rich", _rich)
    g.add_edge(START, "rich")
    g.add_edge("rich", END)
    return g.compile(checkpointer=saver)


def _extend(state, writes):
    return list(state or []) + [x for batch in writes for x in batch]


class DeltaState(TypedDict, total=False):
    log: Annotated[list, DeltaChannel(_extend, snapshot_frequency=2)]


def delta_graph(saver):
    g = StateGraph(DeltaState)
    g.add_node("log", lambda s: {"log": [f"entry {len(s.get('log', []))}"]})
    g.add_edge(START, "log")
    g.add_edge("log", END)
    return g.compile(checkpointer=saver)


def write_everything(saver, encrypted_saver):
    run_scenarios(saver, file_uri=FILE_URI)
    rich_graph(saver).invoke({"messages": [HumanMessage(HUMAN_TEXT)]}, {"configurable": {"thread_id": "rich"}})
    deltas = delta_graph(saver)
    for i in range(3):
        deltas.invoke({"log": [f"in {i}"]}, {"configurable": {"thread_id": "delta"}})
    rich_graph(encrypted_saver).invoke(
        {"messages": [HumanMessage(HUMAN_TEXT)]}, {"configurable": {"thread_id": "enc-rich", "tenant": "acme"}}
    )


def encrypting_serde():
    return EncryptedSerializer.from_pycryptodome_aes(key=KEY)


@pytest.fixture(scope="module")
def pg_url():
    name = f"lg_decode_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = url_for_database(name)
    try:
        with psycopg.connect(url, autocommit=True, prepare_threshold=0, row_factory=dict_row) as conn:
            saver = PostgresSaver(conn)
            saver.setup()
            write_everything(saver, PostgresSaver(conn, serde=encrypting_serde()))
        yield url
    finally:
        with psycopg.connect(server_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def sqlite_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("decode") / "checkpoints.sqlite"
    conn = sqlite3.connect(path, check_same_thread=False)
    try:
        saver = SqliteSaver(conn)
        saver.setup()
        write_everything(saver, SqliteSaver(conn, serde=encrypting_serde()))
    finally:
        conn.close()
    return path


def pg_rows(url, sql, params=()):
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def sqlite_rows(path, sql, params=()):
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def pg_latest_state(url, thread_id, **kw):
    """Channel values of a thread's latest root checkpoint, from the raw rows."""
    [(checkpoint_id, text)] = pg_rows(
        url,
        "SELECT checkpoint_id, checkpoint::text FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = ''"
        " ORDER BY checkpoint_id DESC LIMIT 1",
        (thread_id,),
    )
    values = dict(decode_json_text(text)["channel_values"])
    blobs = pg_rows(
        url,
        "SELECT b.channel, b.type, b.blob FROM checkpoints c"
        " CROSS JOIN jsonb_each_text(c.checkpoint->'channel_versions') v"
        " JOIN checkpoint_blobs b ON b.thread_id = c.thread_id AND b.checkpoint_ns = c.checkpoint_ns"
        "  AND b.channel = v.key AND b.version = v.value"
        " WHERE c.thread_id = %s AND c.checkpoint_ns = '' AND c.checkpoint_id = %s",
        (thread_id, checkpoint_id),
    )
    assert blobs, "the latest checkpoint names blob rows"
    for channel, type_, blob in blobs:
        values[channel] = safe_loads(type_, blob, **kw)
    return values, {type_ for _, type_, _ in blobs}


def sqlite_latest_state(path, thread_id, **kw):
    [(type_, blob)] = sqlite_rows(
        path,
        "SELECT type, checkpoint FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ''"
        " ORDER BY checkpoint_id DESC LIMIT 1",
        (thread_id,),
    )
    decoded = safe_loads(type_, blob, **kw)
    if is_undecodable(decoded):
        return decoded, {type_}
    return decoded["channel_values"], {type_}


def latest_state(backend, source, thread_id, **kw):
    return (pg_latest_state if backend == "pg" else sqlite_latest_state)(source, thread_id, **kw)


@pytest.fixture(params=["pg", "sqlite"])
def source(request):
    if request.param == "pg":
        return "pg", request.getfixturevalue("pg_url")
    return "sqlite", request.getfixturevalue("sqlite_path")


def all_value_rows(backend, source):
    """(where, type, bytes) of every serialized value row at the source."""
    if backend == "pg":
        blobs = pg_rows(source, "SELECT channel, type, blob FROM checkpoint_blobs")
        writes = pg_rows(source, "SELECT channel, type, blob FROM checkpoint_writes")
        return [("blob " + c, t, b) for c, t, b in blobs] + [("write " + c, t, b) for c, t, b in writes]
    rows = [("checkpoint", t, b) for t, b in sqlite_rows(source, "SELECT type, checkpoint FROM checkpoints")]
    rows += [("write " + c, t, b) for c, t, b in sqlite_rows(source, "SELECT channel, type, value FROM writes")]
    return rows


def assert_rich_state(values):
    """The plain forms of everything `_rich` put in the state."""
    messages = values["messages"]
    assert [m["__type__"] for m in messages] == [
        "langchain_core.messages.human.HumanMessage",
        "langchain_core.messages.ai.AIMessage",
    ]
    assert [m["ext"] for m in messages] == [5, 5]
    assert [m["value"]["content"] for m in messages] == [HUMAN_TEXT, AI_TEXT]
    assert messages[1]["value"]["tool_calls"][0]["args"] == {"invoice": 42}
    assert values["when"] == {
        "__type__": "datetime.datetime",
        "ext": 3,
        "value": WHEN.isoformat(),
        "method": "fromisoformat",
    }
    assert values["uid"] == {"__type__": "uuid.UUID", "ext": 0, "value": str(UID)}
    assert values["amount"] == {"__type__": "decimal.Decimal", "ext": 0, "value": str(AMOUNT)}
    assert values["tags"]["__type__"] == "builtins.set"
    assert sorted(values["tags"]["value"]) == sorted(TAGS)
    assert values["payload"] == {"__bytes__": len(PAYLOAD), "preview": PAYLOAD[:64].hex()}
    assert values["invoice"] == {
        "__type__": f"{__name__}.Invoice",
        "ext": 2,
        "value": {
            "number": INVOICE.number,
            "total": {"__type__": "decimal.Decimal", "ext": 0, "value": str(AMOUNT)},
            "lines": INVOICE.lines,
        },
    }
    customer = values["customer"]
    assert (customer["__type__"], customer["ext"]) == (f"{__name__}.Customer", 5)
    assert customer["value"]["name"] == CUSTOMER.name
    assert customer["value"]["joined"]["value"] == WHEN.isoformat()  # an extension inside an extension
    assert values["note"] == NOTE
    json.dumps(values, allow_nan=False)  # plain JSON all the way down


# ---- real rows -------------------------------------------------------------------------


def test_every_real_row_decodes_to_plain_json(source):
    backend, where = source
    rows = all_value_rows(backend, where)
    types = set()
    for place, type_, blob in rows:
        types.add(type_)
        if is_encrypted(type_):
            continue
        decoded = safe_loads(type_, blob, limit=None, clip=False)
        assert not is_undecodable(decoded), (place, type_, decoded)
        assert json.loads(json.dumps(decoded, allow_nan=False)) == decoded
        assert safe_loads(type_, blob) == decoded  # these rows are all under the display caps
    assert "msgpack" in types
    assert any(is_encrypted(t) for t in types), "the encrypted graph wrote rows here too"


def test_rich_state_decodes_to_its_plain_values(source):
    backend, where = source
    values, types = latest_state(backend, where, "rich")
    assert_rich_state(values)
    if backend == "pg":
        assert {"msgpack", "bytes"} <= types  # bytes channels get their own blob type


def test_numpy_array_shows_dtype_shape_and_size_only(source):
    if np is None:
        pytest.skip("numpy is not installed")
    backend, where = source
    values, _ = latest_state(backend, where, "rich")
    matrix = _matrix()
    assert values["matrix"] == {
        "__type__": "numpy.ndarray",
        "ext": 6,
        "dtype": matrix.dtype.str,
        "shape": list(matrix.shape),
        "nbytes": matrix.nbytes,
    }


def test_writes_decode_with_their_messages_and_interrupts(source):
    backend, where = source
    if backend == "pg":
        rows = pg_rows(where, "SELECT thread_id, channel, type, blob FROM checkpoint_writes")
    else:
        rows = sqlite_rows(where, "SELECT thread_id, channel, type, value FROM writes")
    by_thread = {}
    for thread_id, channel, type_, blob in rows:
        by_thread.setdefault(thread_id, []).append((channel, safe_loads(type_, blob)))

    rich_messages = [v for ch, v in by_thread["rich"] if ch == "messages"]
    assert any(m.get("value", {}).get("content") == AI_TEXT for batch in rich_messages for m in batch)

    interrupts = [v for ch, v in by_thread["t-waiting"] if ch == "__interrupt__"]
    assert interrupts, "the thread left at an interrupt has an __interrupt__ write"
    [[pending]] = interrupts
    assert pending["__type__"] == "langgraph.types.Interrupt"
    assert pending["value"]["value"] == {"question": "approve?"}

    payloads = [v for ch, v in by_thread["t-bytes"] if ch == "payload"]
    assert payloads == [{"__bytes__": len(b"\x00\x01binary" * 10), "preview": (b"\x00\x01binary" * 10)[:64].hex()}]


def test_delta_snapshots_are_marked(source):
    backend, where = source
    if backend == "pg":
        rows = pg_rows(where, "SELECT type, blob FROM checkpoint_blobs WHERE thread_id = 'delta' AND channel = 'log'")
        snapshots = [safe_loads(t, b) for t, b in rows]
    else:
        rows = sqlite_rows(where, "SELECT type, checkpoint FROM checkpoints WHERE thread_id = 'delta'")
        snapshots = [safe_loads(t, b)["channel_values"].get("log") for t, b in rows]
    snapshots = [s for s in snapshots if isinstance(s, dict) and "__delta_snapshot__" in s]
    assert snapshots, "snapshot_frequency=2 wrote snapshot blobs"
    longest = max(snapshots, key=lambda s: len(s["__delta_snapshot__"]))
    assert longest["__delta_snapshot__"] == ["in 0", "entry 1", "in 1", "entry 3", "in 2", "entry 5"]
    assert summarize(longest) == "delta snapshot of list[6]"


def test_inline_values_and_metadata_decode(source):
    backend, where = source
    if backend == "pg":
        [(checkpoint, metadata)] = pg_rows(
            where,
            "SELECT checkpoint::text, metadata::text FROM checkpoints WHERE thread_id = 't-chat0'"
            " AND checkpoint_ns = '' ORDER BY checkpoint_id DESC LIMIT 1",
        )
        inline = decode_json_text(checkpoint)["channel_values"]
        assert inline["label"] == "turn-4" and inline["counter"] == 4
        meta = decode_json_text(metadata)
    else:
        [(metadata,)] = sqlite_rows(
            where,
            "SELECT metadata FROM checkpoints WHERE thread_id = 't-chat0' AND checkpoint_ns = ''"
            " ORDER BY checkpoint_id DESC LIMIT 1",
        )
        meta = safe_loads("json", metadata)
    assert (meta["tenant"], meta["user_id"], meta["source"]) == ("acme", "u0", "loop")


def test_references_found_in_real_rows(source):
    backend, where = source
    found = {}
    for place, type_, blob in all_value_rows(backend, where):
        decoded = safe_loads(type_, blob, limit=None, clip=False)
        for uri in find_references(decoded):
            found.setdefault(uri, set()).add(place)
    assert set(found) == {FILE_URI}
    if backend == "pg":
        # named by the state's `doc` blob and by the node's write of `doc`, not only by prose
        assert {"blob doc", "write doc"} <= found[FILE_URI]


def test_encrypted_rows_without_key_with_key_and_with_a_wrong_key(source):
    backend, where = source
    if backend == "pg":
        rows = pg_rows(
            where,
            "SELECT type, blob FROM checkpoint_blobs WHERE thread_id = 'enc-rich'"
            " UNION ALL SELECT type, blob FROM checkpoint_writes WHERE thread_id = 'enc-rich'",
        )
        [(metadata,)] = pg_rows(where, "SELECT metadata::text FROM checkpoints WHERE thread_id = 'enc-rich' LIMIT 1")
        assert decode_json_text(metadata)["tenant"] == "acme"  # metadata stays plaintext
    else:
        rows = sqlite_rows(
            where,
            "SELECT type, checkpoint FROM checkpoints WHERE thread_id = 'enc-rich'"
            " UNION ALL SELECT type, value FROM writes WHERE thread_id = 'enc-rich'",
        )
    assert rows and all(t.endswith("+aes") for t, _ in rows)
    for type_, blob in rows:
        hidden = safe_loads(type_, blob)
        assert hidden == {"__encrypted__": type_, "size": len(blob)}
        assert is_undecodable(hidden) and summarize(hidden) == f"encrypted {type_}"
        wrong = safe_loads(type_, blob, aes_key=WRONG_KEY)
        assert wrong["__encrypted__"] == type_ and "wrong key" in wrong["error"]
        assert is_undecodable(wrong)
        assert not is_undecodable(safe_loads(type_, blob, aes_key=KEY))

    hidden, _ = latest_state(backend, where, "enc-rich")
    if backend == "pg":  # inline primitives stay plaintext, blobs do not
        assert hidden["note"] == NOTE and hidden["messages"]["__encrypted__"] == "msgpack+aes"
    else:  # the whole checkpoint is one encrypted value
        assert set(hidden) == {"__encrypted__", "size"}
    values, types = latest_state(backend, where, "enc-rich", aes_key=KEY)
    assert all(t.endswith("+aes") for t in types)
    assert_rich_state(values)
    # The LANGGRAPH_AES_KEY setting is text, as LangGraph reads it from the environment.
    assert latest_state(backend, where, "enc-rich", aes_key=KEY.decode())[0] == values


# ---- LangGraph's serializer, value by value ----------------------------------------------


class Colour(Enum):
    RED = "red"


Point = namedtuple("Point", "x y")


def _dumped(value):
    return SERDE.dumps_typed(value)


def ext(type_name, code, value, **extra):
    """The plain form the decoder gives a msgpack extension value."""
    return {"__type__": type_name, "ext": code, "value": value, **extra}


def _fields(obj):
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _time_fields(t):
    return {"hour": t.hour, "minute": t.minute, "second": t.second, "microsecond": 0, "tzinfo": None, "fold": 0}


SERDE_CASES = [
    ("text", "héllo wörld", lambda v: v),
    ("int", 2**62, lambda v: v),
    ("float", 1.25, lambda v: v),
    ("bool", True, lambda v: v),
    ("nested", {"a": [1, {"b": None}], "c": "d"}, lambda v: v),
    ("int keys", {1: "one", 2: "two"}, lambda v: {str(k): x for k, x in v.items()}),
    ("uuid", UID, lambda v: ext("uuid.UUID", 0, str(v))),
    ("decimal", AMOUNT, lambda v: ext("decimal.Decimal", 0, str(v))),
    ("set", {3, 1, 2}, lambda v: ext("builtins.set", 0, sorted(v))),
    ("frozenset", frozenset({"x"}), lambda v: ext("builtins.frozenset", 0, list(v))),
    ("deque", deque([1, 2]), lambda v: ext("collections.deque", 0, list(v))),
    ("enum", Colour.RED, lambda v: ext(f"{__name__}.Colour", 0, v.value)),
    ("ip", IPv4Address("10.0.0.1"), lambda v: ext("ipaddress.IPv4Address", 0, str(v))),
    ("zoneinfo", ZoneInfo("Europe/Paris"), lambda v: ext("zoneinfo.ZoneInfo", 0, v.key)),
    ("datetime", WHEN, lambda v: ext("datetime.datetime", 3, v.isoformat(), method="fromisoformat")),
    ("date", date(2026, 1, 2), lambda v: ext("datetime.date", 1, [v.year, v.month, v.day])),
    ("timedelta", timedelta(days=1, seconds=5), lambda v: ext("datetime.timedelta", 1, [v.days, v.seconds, 0])),
    ("time", time(1, 2, 3), lambda v: ext("datetime.time", 2, _time_fields(v))),
    ("path", pathlib.Path("/a/b"), lambda v: ext(f"pathlib.{type(v).__name__}", 1, list(v.parts))),
    ("regex", re.compile("a+b", re.I), lambda v: ext("re.compile", 1, [v.pattern, v.flags])),
    ("namedtuple", Point(1, 2), lambda v: ext(f"{__name__}.Point", 2, v._asdict())),
    ("send", Send("node", {"n": 1}), lambda v: ext("langgraph.types.Send", 1, [v.node, v.arg])),
    ("interrupt", Interrupt(value="ok?", id="i1"), lambda v: ext("langgraph.types.Interrupt", 2, _fields(v))),
    ("exception", ValueError("boom"), lambda v: repr(v)),
    ("bytes in a dict", {"raw": b"\x00\x01"}, lambda v: {"raw": {"__bytes__": 2, "preview": v["raw"].hex()}}),
    ("delta snapshot", _DeltaSnapshot(["a", UID]), lambda v: {"__delta_snapshot__": ["a", ext("uuid.UUID", 0, str(UID))]}),
    ("bytes", PAYLOAD, lambda v: {"__bytes__": len(v), "preview": v[:64].hex()}),
    ("bytearray", bytearray(b"abc"), lambda v: {"__bytes__": len(v), "preview": v.hex()}),
    ("none", None, lambda v: None),
]


@pytest.mark.parametrize("value,expected", [c[1:] for c in SERDE_CASES], ids=[c[0] for c in SERDE_CASES])
def test_langgraph_serializer_output_decodes_to_plain_values(value, expected):
    type_, data = _dumped(value)
    decoded = safe_loads(type_, data)
    if isinstance(value, set):
        decoded = {**decoded, "value": sorted(decoded["value"])}
    assert decoded == expected(value)
    json.dumps(decoded, allow_nan=False)


def test_messages_and_models_decode_to_their_fields():
    human, ai = HumanMessage("hi", id="m1"), AIMessage("hello", id="m2")
    decoded = safe_loads(*_dumped([human, ai, CUSTOMER]))
    assert decoded[0] == {
        "__type__": "langchain_core.messages.human.HumanMessage",
        "ext": 5,
        "value": json.loads(json.dumps(human.model_dump())),
        "method": "model_validate_json",
    }
    assert decoded[1]["value"]["content"] == "hello" and decoded[1]["value"]["type"] == "ai"
    assert decoded[2]["value"]["email"] == CUSTOMER.email
    assert summarize(decoded[0]) == "HumanMessage"


def test_numpy_array_from_serializer():
    if np is None:
        pytest.skip("numpy is not installed")
    array = np.arange(12, dtype=np.int32).reshape(3, 4).T  # Fortran-ordered view: another encoder path
    decoded = safe_loads(*_dumped({"m": array}))["m"]
    assert decoded == {"__type__": "numpy.ndarray", "ext": 6, "dtype": "<i4", "shape": [4, 3], "nbytes": 48}
    assert summarize(decoded) == "ndarray <i4 [4, 3]"


def test_legacy_json_type_revives_nothing():
    envelope = {"lc": 2, "type": "constructor", "id": ["os", "system"], "kwargs": {"command": "true"}}
    data = json.dumps({"v": envelope}).encode()
    with watching() as events:
        assert safe_loads("json", data) == {"v": envelope}
    assert events == []


# ---- encryption --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [None, b"raw bytes", bytearray(b"ba"), {"messages": [HumanMessage("secret")], "uid": UID}, "text"]
)
def test_encrypted_serializer_values(value):
    type_, data = encrypting_serde().dumps_typed(value)
    plain_type, plain_data = SERDE.dumps_typed(value)
    assert type_ == f"{plain_type}+aes" and is_encrypted(type_)

    assert safe_loads(type_, data) == {"__encrypted__": type_, "size": len(data)}
    assert safe_loads(type_, data, aes_key=KEY) == safe_loads(plain_type, plain_data)

    wrong = safe_loads(type_, data, aes_key=WRONG_KEY)
    assert set(wrong) == {"__encrypted__", "size", "error"} and "wrong key" in wrong["error"]
    tampered = data[:-1] + bytes([data[-1] ^ 1]) if len(data) > 32 else data[:16] + bytes(16)
    assert "error" in safe_loads(type_, tampered, aes_key=KEY)
    assert "error" in safe_loads(type_, data, aes_key=b"short")


def test_encrypted_with_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("LANGGRAPH_AES_KEY", "k" * 24)
    type_, data = EncryptedSerializer.from_pycryptodome_aes().dumps_typed({"note": NOTE})
    assert safe_loads(type_, data, aes_key="k" * 24) == {"note": NOTE}


def test_other_ciphers_stay_encrypted():
    decoded = safe_loads("msgpack+rot13", b"x" * 40, aes_key=KEY)
    assert decoded["__encrypted__"] == "msgpack+rot13" and "unsupported cipher" in decoded["error"]


# ---- nothing is unpickled, imported or called ------------------------------------------

UNPICKLED = []


def _record_unpickling(path):
    UNPICKLED.append(path)
    pathlib.Path(path).touch()
    return "ran"


class Trap:
    """Pickles fine; unpickling it calls _record_unpickling, which leaves a file behind."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (_record_unpickling, (self.path,))


def test_pickle_is_never_unpickled(tmp_path):
    sentinel = tmp_path / "unpickled"
    type_, data = JsonPlusSerializer(pickle_fallback=True).dumps_typed(Trap(str(sentinel)))
    assert type_ == "pickle"
    enc_type, enc_data = EncryptedSerializer.from_pycryptodome_aes(
        JsonPlusSerializer(pickle_fallback=True), key=KEY
    ).dumps_typed(Trap(str(sentinel)))
    assert enc_type == "pickle+aes"

    with watching() as events:
        decoded = safe_loads(type_, data)
        decrypted = safe_loads(enc_type, enc_data, aes_key=KEY)
    assert decoded == {"__unsupported__": "pickle", "size": len(data)}
    assert decrypted["__unsupported__"] == "pickle" and is_undecodable(decrypted)
    assert is_undecodable(decoded) and summarize(decoded).startswith("pickle ")
    assert not sentinel.exists() and UNPICKLED == []
    assert not [e for e in events if e[0] == "pickle.find_class"]

    # The control: LangGraph's own loader does run it, so the sentinel can see a call.
    assert JsonPlusSerializer(pickle_fallback=True).loads_typed((type_, data)) == "ran"
    assert sentinel.exists() and UNPICKLED == [str(sentinel)]
    UNPICKLED.clear()


def crafted_ext(code, *fields):
    return ormsgpack.packb(ormsgpack.Ext(code, ormsgpack.packb(list(fields))))


def test_extension_values_naming_modules_import_and_call_nothing(tmp_path, monkeypatch):
    imported, called, shell = tmp_path / "imported", tmp_path / "called", tmp_path / "shell"
    (tmp_path / "decode_canary_mod.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(imported)!r}).touch()\n"
        "class Boom:\n"
        "    def __init__(self, *args, **kwargs):\n"
        f"        pathlib.Path({str(called)!r}).touch()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    command = f"touch {shell}"
    crafted = [crafted_ext(code, "decode_canary_mod", "Boom", {"arg": 1}, "model_validate_json") for code in range(6)]
    crafted += [
        crafted_ext(0, "os", "system", command),
        crafted_ext(1, "os", "system", [command]),
        crafted_ext(3, "os", "system", command, "__call__"),
        crafted_ext(5, "no_such_module_7f3a", "Thing", {"a": 1}),
        crafted_ext(0, "builtins", "eval", "__import__('no_such_module_7f3b')"),
    ]
    safe_loads("msgpack", crafted[0])  # warm up: any import of our own happens here, not below

    with watching() as events:
        decoded = [safe_loads("msgpack", data) for data in crafted]
    assert events == []
    for module in ("decode_canary_mod", "no_such_module_7f3a", "no_such_module_7f3b"):
        assert module not in sys.modules
    assert not imported.exists() and not called.exists() and not shell.exists()
    assert decoded[0] == {
        "__type__": "decode_canary_mod.Boom",
        "ext": 0,
        "value": {"arg": 1},
        "method": "model_validate_json",
    }
    assert [d["__type__"] for d in decoded[6:]] == [
        "os.system",
        "os.system",
        "os.system",
        "no_such_module_7f3a.Thing",
        "builtins.eval",
    ]
    assert decoded[6]["value"] == command

    # The control: LangGraph's permissive loader imports the module and calls the class.
    JsonPlusSerializer(allowed_msgpack_modules=True).loads_typed(("msgpack", crafted[0]))
    assert imported.exists() and called.exists()
    sys.modules.pop("decode_canary_mod", None)


# ---- corrupt, huge and deep values -------------------------------------------------------


def real_messages_blob(pg_url):
    [(blob,)] = pg_rows(
        pg_url,
        "SELECT blob FROM checkpoint_blobs WHERE thread_id = 'rich' AND channel = 'messages' AND type = 'msgpack'"
        " ORDER BY octet_length(blob) DESC LIMIT 1",
    )
    return blob


def test_truncated_real_blob_is_an_error_not_an_exception(pg_url):
    blob = real_messages_blob(pg_url)
    assert not is_undecodable(safe_loads("msgpack", blob))
    for cut in (1, len(blob) // 3, len(blob) // 2, len(blob) - 1):
        decoded = safe_loads("msgpack", blob[:cut])
        assert set(decoded) == {"__error__", "size"} and decoded["size"] == cut, decoded
        assert decoded["__error__"].startswith("corrupt msgpack")
        assert is_undecodable(decoded) and summarize(decoded).startswith("undecodable")


@pytest.mark.parametrize(
    "type_,data,reason",
    [
        ("msgpack", b"\xc1", "invalid"),  # a byte msgpack never uses
        ("msgpack", b"\xa3\xff\xfe\xfd", "UTF-8"),
        ("msgpack", b"", "end of file"),
        ("msgpack", ormsgpack.packb(ormsgpack.Ext(0, b"\xc1")), "extension type 0"),
        ("json", b'{"a": ', "Expecting value"),
        ("json", b'"\xff\xfe"', "codec"),
    ],
)
def test_corrupt_values(type_, data, reason):
    decoded = safe_loads(type_, data)
    assert set(decoded) == {"__error__", "size"} and decoded["size"] == len(data)
    assert reason in decoded["__error__"], decoded


def test_unknown_types_and_odd_inputs():
    assert safe_loads("protobuf", b"\x08\x01") == {"__unsupported__": "protobuf", "size": 2}
    assert safe_loads(None, b"abc") == {"__unsupported__": "None", "size": 3}
    assert safe_loads("empty", None) is None and safe_loads("bytes", None) is None
    assert safe_loads("msgpack", memoryview(b"\x91\x01")) == [1]
    assert safe_loads("json", "[1]") == [1]  # a TEXT cell in SQLite
    assert safe_loads("msgpack", 12)["__error__"] == "expected bytes, got int"
    # unknown extension codes keep their payload, still without importing anything
    assert safe_loads("msgpack", crafted_ext(9, "a", "b")) == {"__ext__": 9, "value": ["a", "b"]}


def test_values_over_the_limit_are_not_decoded():
    junk = b"\xc1" * 5000  # corrupt, so decoding it would say so
    assert safe_loads("msgpack", junk, limit=4999) == {"__truncated__": True, "type": "msgpack", "size": 5000}
    assert "__error__" in safe_loads("msgpack", junk, limit=5000)
    big = safe_loads(*SERDE.dumps_typed("x" * (decode.DEFAULT_LIMIT + 1)))
    assert big["__truncated__"] is True and big["size"] > decode.DEFAULT_LIMIT
    assert is_undecodable(big) and summarize(big) == "msgpack 2.0 MB, too large to show"
    assert safe_loads(*SERDE.dumps_typed("x" * (decode.DEFAULT_LIMIT + 1)), limit=None) != big


def test_long_strings_lists_and_dicts_are_cut_for_display_only():
    long_text = "é" * (MAX_STRING + 5)
    items = [f"item {i}" for i in range(MAX_ITEMS + 500)] + ["s3://bucket/uploads/last.bin"]
    wide = {f"k{i}": i for i in range(MAX_ITEMS + 1)}
    type_, data = SERDE.dumps_typed({"text": long_text, "items": items, "wide": wide})

    shown = safe_loads(type_, data)
    assert shown["text"] == "é" * MAX_STRING + f" …[cut, {len(long_text.encode())} bytes in all]"
    assert summarize(shown["text"]) == "str 20.0 KB"
    assert shown["items"][:MAX_ITEMS] == items[:MAX_ITEMS]
    assert shown["items"][MAX_ITEMS:] == [{"__more__": len(items) - MAX_ITEMS, "total": len(items)}]
    assert summarize(shown["items"]) == f"list[{len(items)}]"
    assert shown["wide"]["__more__"] == {"__more__": 1, "total": MAX_ITEMS + 1}
    assert summarize(shown["wide"]) == f"dict[{MAX_ITEMS + 1}]"
    assert find_references(shown) == set()  # cut for display: the last item is not shown

    full = safe_loads(type_, data, clip=False)
    assert full == {"text": long_text, "items": items, "wide": wide}
    assert find_references(full) == {"s3://bucket/uploads/last.bin"}


def _nested_list(depth, leaf="s3://bucket/uploads/deep.bin"):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def test_deep_nesting_is_capped_for_display_and_an_error_when_scanning_too_deep():
    data = ormsgpack.packb(_nested_list(MAX_DEPTH + 10))
    shown = safe_loads("msgpack", data)
    inner = shown
    for _ in range(MAX_DEPTH):
        inner = inner[0]
    assert inner == {"__deep__": "list[1]"}
    assert find_references(safe_loads("msgpack", data, clip=False)) == {"s3://bucket/uploads/deep.bin"}

    too_deep = safe_loads("msgpack", b"\x91" * (decode.MAX_SCAN_DEPTH + 1) + b"\xc0", clip=False)
    assert set(too_deep) == {"__error__", "size"} and is_undecodable(too_deep)
    assert "deeper than" in too_deep["__error__"]

    beyond_msgpack = b"\x91" * 5000 + b"\xc0"
    assert "__error__" in safe_loads("msgpack", beyond_msgpack)
    assert "__error__" in safe_loads("json", b"[" * 100_000 + b"]" * 100_000)

    chain = ormsgpack.packb("leaf")
    for _ in range(decode.MAX_EXT_DEPTH + 1):
        chain = ormsgpack.packb(ormsgpack.Ext(0, chain))
    nested_ext = safe_loads("msgpack", chain)
    assert "nested deeper than" in nested_ext["__error__"]


def test_non_string_keys_and_odd_floats():
    data = ormsgpack.packb({1: "a", None: "b", 1.5: "c", b"k": "d"}, option=ormsgpack.OPT_NON_STR_KEYS)
    assert safe_loads("msgpack", data) == {"1": "a", "None": "b", "1.5": "c", "b'k'": "d"}
    assert safe_loads("msgpack", ormsgpack.packb([float("nan"), float("-inf")])) == [
        {"__float__": "nan"},
        {"__float__": "-inf"},
    ]
    assert safe_loads("json", b"[NaN]") == [{"__float__": "nan"}]


def test_iter_strings_walks_keys_and_values_at_any_depth():
    value = {"k": _nested_list(5000, "deep leaf"), "other": [{"x": "y"}]}
    assert sorted(iter_strings(value)) == ["deep leaf", "k", "other", "x", "y"]


@settings(max_examples=300, deadline=None)
@given(
    type_=st.sampled_from(["msgpack", "json", "bytes", "pickle", "msgpack+aes", "null+aes", "weird"]),
    data=st.binary(max_size=300),
)
def test_arbitrary_bytes_never_raise_and_stay_plain(type_, data):
    for clip in (True, False):
        decoded = safe_loads(type_, data, aes_key=KEY, clip=clip)
        json.dumps(decoded, allow_nan=False)
        summarize(decoded)
        find_references(decoded)


@settings(max_examples=200, deadline=None)
@given(value=st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5),
    max_leaves=30,
))
def test_any_msgpack_value_round_trips_to_plain_json(value):
    decoded = safe_loads("msgpack", ormsgpack.packb(value), clip=False)
    assert not is_undecodable(decoded)
    assert json.loads(json.dumps(decoded, allow_nan=False)) == decoded
    assert set(iter_strings(decoded)) >= {s for s in iter_strings(value) if isinstance(s, str)}


def _full_scan(type_, data, limit=None):
    decoded = safe_loads(type_, data, limit=limit, aes_key=KEY, clip=False)
    return (set(), False) if is_undecodable(decoded) else (find_references(decoded), True)


_URI_TEXT = st.sampled_from(["s3://b/u/a.pdf", "see file:///tmp/x.png.", "minio://m/k", "x://y", "plain"])


@settings(max_examples=300, deadline=None)
@given(
    type_=st.sampled_from(["msgpack", "json", "bytes", "pickle", "msgpack+aes", "null+aes", "weird", "null"]),
    data=st.binary(max_size=300),
)
def test_the_sync_reference_scan_agrees_with_the_full_decoder_on_arbitrary_bytes(type_, data):
    assert references_in(type_, data, aes_key=KEY) == _full_scan(type_, data)


@settings(max_examples=300, deadline=None)
@given(value=st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | _URI_TEXT | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=5)
    # Text keys or integer keys, never both in one map: the decoder shows keys as
    # text, so {0: x, "0": y} keeps one of them on the page, while the sync's scan
    # (rightly) records a reference under either.
    | st.dictionaries(_URI_TEXT | st.text(max_size=5), children, max_size=5)
    | st.dictionaries(st.integers(0, 9), children, max_size=5),
    max_leaves=30,
))
def test_the_sync_reference_scan_agrees_with_the_full_decoder_on_any_msgpack_value(value):
    data = ormsgpack.packb(value, option=ormsgpack.OPT_NON_STR_KEYS)
    assert references_in("msgpack", data) == _full_scan("msgpack", data)
    encrypted = EncryptedSerializer.from_pycryptodome_aes(key=KEY).dumps_typed(value) if isinstance(value, dict) else None
    if encrypted is not None:
        assert references_in(*encrypted, aes_key=KEY) == _full_scan(*encrypted)
        assert references_in(*encrypted) == (set(), False)  # no key: unknown


def test_the_sync_reference_scan_agrees_on_real_rows_depth_and_size_limits(source):
    backend, where = source
    rows = list(all_value_rows(backend, where))
    assert rows
    for _, type_, blob in rows:
        assert references_in(type_, blob, aes_key=KEY) == _full_scan(type_, blob)
        assert references_in(type_, blob, limit=10, aes_key=KEY) == _full_scan(type_, blob, limit=10)
    leaf = ormsgpack.packb("s3://b/deep")
    too_deep = b"\x91" * (decode.MAX_SCAN_DEPTH + 1) + leaf  # lists of one, nested
    assert references_in("msgpack", too_deep) == _full_scan("msgpack", too_deep) == (set(), False)
    deep = b"\x91" * (decode.MAX_SCAN_DEPTH - 5) + leaf
    assert references_in("msgpack", deep) == _full_scan("msgpack", deep) == ({"s3://b/deep"}, True)
    for hopeless in (b"\x91" * 5000 + leaf, ):
        assert references_in("msgpack", hopeless) == _full_scan("msgpack", hopeless) == (set(), False)
    assert references_in("json", b"[" * 100_000 + b"]" * 100_000) == (set(), False)
