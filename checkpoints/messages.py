"""LangChain messages inside safely decoded values (checkpoints.decode).

The decoder never builds the message classes: a message written by
LangGraph's msgpack serializer comes back as the marker
`{"__type__": "langchain_core.messages.ai.AIMessage", "ext": 5, "value": {...}}`
whose value is the message's `model_dump()`; a JSON-serialized one is
LangChain's constructor envelope `{"lc": 1, "type": "constructor", "id":
[..., "AIMessage"], "kwargs": {...}}`. These helpers read either form.
"""

from typing import NamedTuple

REMOVE_ALL_MESSAGES = "__remove_all__"  # langgraph.graph.message.REMOVE_ALL_MESSAGES
_MODULE = "langchain_core.messages."
# The `type` field of each message class, from its class name, for envelopes
# that carry only kwargs.
_ROLES = {
    "HumanMessage": "human", "AIMessage": "ai", "SystemMessage": "system", "ToolMessage": "tool",
    "FunctionMessage": "function", "ChatMessage": "chat", "RemoveMessage": "remove",
    "HumanMessageChunk": "human", "AIMessageChunk": "ai", "SystemMessageChunk": "system",
    "ToolMessageChunk": "tool", "FunctionMessageChunk": "function", "ChatMessageChunk": "chat",
}


class Message(NamedTuple):
    id: str | None
    role: str
    fields: dict  # the message's model_dump(): content, id, type, ...


def as_message(item) -> Message | None:
    """The id, role and fields of a decoded LangChain message, or None for anything else.

    >>> as_message({"__type__": "langchain_core.messages.ai.AIMessage", "ext": 5,
    ...             "value": {"content": "hi", "type": "ai", "id": "m1"}})
    Message(id='m1', role='ai', fields={'content': 'hi', 'type': 'ai', 'id': 'm1'})
    >>> as_message({"lc": 1, "type": "constructor", "id": ["langchain", "schema", "messages", "HumanMessage"],
    ...             "kwargs": {"content": "yo", "type": "human"}}).role
    'human'
    >>> as_message({"__type__": "uuid.UUID", "ext": 0, "value": "x"}), as_message("hello")
    (None, None)
    """
    if not isinstance(item, dict):
        return None
    if "__type__" in item and "ext" in item:
        name = item["__type__"]
        fields = item.get("value")
        if not (isinstance(name, str) and name.startswith(_MODULE) and isinstance(fields, dict)):
            return None
        cls = name.rsplit(".", 1)[-1]
    elif item.get("lc") == 1 and item.get("type") == "constructor" and isinstance(item.get("id"), list):
        path, fields = item["id"], item.get("kwargs")
        cls = path[-1] if path and isinstance(path[-1], str) else ""
        if cls not in _ROLES or "messages" not in path or not isinstance(fields, dict):
            return None
    else:
        return None
    role = fields.get("type") if isinstance(fields.get("type"), str) else _ROLES.get(cls, cls)
    mid = fields.get("id")
    return Message(mid if isinstance(mid, str) else None, role, fields)


def is_remove(message: Message) -> bool:
    return message.role == "remove"


def text_of(message: Message, width: int = 80) -> str:
    """A one-line excerpt of a message's content (text blocks joined).

    >>> text_of(Message("m", "ai", {"content": [{"type": "text", "text": "a\\nb"}, {"type": "image"}]}))
    'a b [image]'
    >>> text_of(Message("m", "ai", {"content": "x" * 100}), width=10)
    'xxxxxxxxx…'
    """
    content = message.fields.get("content")
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif isinstance(block, dict):
                parts.append(f"[{block.get('type', 'block')}]")
        content = " ".join(parts)
    elif not isinstance(content, str):
        content = "" if content is None else str(content)
    if not content and message.fields.get("tool_calls"):
        calls = message.fields["tool_calls"]
        names = [c.get("name", "?") for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
        content = "tool calls: " + ", ".join(map(str, names))
    text = " ".join(content.split())
    return text if len(text) <= width else text[: width - 1] + "…"
