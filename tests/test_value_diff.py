"""dashboard.value_diff: what changed between a checkpoint's values and its parent's (issue 14.2)."""

from dashboard.value_diff import MAX_DEPTH, MAX_DETAILS, diff_values


def msg(role, mid, content):
    cls = {"human": "human.HumanMessage", "ai": "ai.AIMessage", "tool": "tool.ToolMessage"}[role]
    return {"__type__": f"langchain_core.messages.{cls}", "ext": 5,
            "value": {"content": content, "type": role, "id": mid, "additional_kwargs": {}}}


def details(change):
    return [(d.path, d.op, d.text) for d in change.details]


def test_channels_added_removed_and_changed_with_sizes():
    changes = diff_values({"gone": "x", "n": 1, "same": [1]}, {"n": 2, "new": {"a": 1}, "same": [1]},
                          {"gone": 3, "n": 1, "same": 5}, {"n": 1, "new": 8, "same": 5})
    assert [(c.channel, c.kind, c.before_size, c.after_size) for c in changes] == [
        ("gone", "removed", 3, None), ("n", "changed", 1, 1), ("new", "added", None, 8)]
    assert details(changes[0]) == [("", "removed", "'x'")]
    assert details(changes[1]) == [("", "changed", "1 → 2")]


def test_messages_by_id_with_role_and_excerpt():
    before = [msg("human", "h1", "hello"), msg("ai", "a1", "first answer"), msg("ai", "a2", "second")]
    after = [msg("human", "h1", "hello"), msg("ai", "a2", "second, edited"),
             msg("human", "h2", [{"type": "text", "text": "next\nquestion"}]), msg("tool", "t1", "x" * 500)]
    (change,) = diff_values({"messages": before}, {"messages": after})
    got = details(change)
    assert ("message a1", "removed", "ai: first answer") in got
    assert ("message a2", "changed", "ai: second, edited") in got
    assert ("message h2", "appended", "human: next question") in got
    tool = [d for d in got if d[0] == "message t1"][0]
    assert tool[1] == "appended" and tool[2].startswith("tool: xxx") and len(tool[2]) < 120
    assert not any(d[0] == "message h1" for d in got)


def test_plain_list_appended_and_removed():
    (change,) = diff_values({"log": ["a", "b"]}, {"log": ["a", "b", "c", "d"]})
    assert details(change) == [("[2]", "appended", "'c'"), ("[3]", "appended", "'d'")]
    (change,) = diff_values({"log": ["a", "b", "c"]}, {"log": ["a", "c"]})
    assert details(change) == [("[1]", "removed", "'b'")]
    (change,) = diff_values({"log": ["a", "b", "c"]}, {"log": ["a", "x", "y", "c"]})
    assert details(change) == [("[1]", "removed", "'b'"), ("[1]", "added", "'x'"), ("[2]", "added", "'y'")]


def test_dict_keys_recursively_then_cut_at_a_depth():
    before = {"doc": {"pages": 3, "title": "a", "meta": {"x": 1}}, "keep": 1}
    after = {"doc": {"pages": 4, "meta": {"x": 1, "y": [1]}, "owner": "u1"}, "keep": 1}
    (change,) = diff_values({"state": before}, {"state": after})
    assert sorted(details(change)) == sorted([
        ("doc.pages", "changed", "3 → 4"), ("doc.title", "removed", "'a'"),
        ("doc.meta.y", "added", "[1]"), ("doc.owner", "added", "'u1'")])
    deep_old, deep_new = {"v": 1}, {"v": 2}
    for _ in range(MAX_DEPTH + 3):
        deep_old, deep_new = {"k": deep_old}, {"k": deep_new}
    (change,) = diff_values({"s": deep_old}, {"s": deep_new})
    (detail,) = change.details
    assert detail.op == "changed" and detail.path.count("k") == MAX_DEPTH


def test_a_changed_item_inside_a_list_is_compared_in_place():
    (change,) = diff_values({"rows": [{"id": 1, "n": 1}, {"id": 2, "n": 1}]}, {"rows": [{"id": 1, "n": 1}, {"id": 2, "n": 5}]})
    assert details(change) == [("[1].n", "changed", "1 → 5")]


def test_scalars_before_and_after_and_type_changes():
    (change,) = diff_values({"label": "turn-1"}, {"label": "turn-2"})
    assert details(change) == [("", "changed", "'turn-1' → 'turn-2'")]
    (change,) = diff_values({"x": None}, {"x": [1, 2]})
    assert details(change) == [("", "changed", "null → [1, 2]")]


def test_undecodable_values_fall_back_to_sizes():
    (change,) = diff_values({"big": {"__truncated__": True, "type": "msgpack", "size": 9}}, {"big": [1]}, {"big": 9}, {"big": 3})
    assert change.kind == "changed" and change.details == [] and "sizes only" in change.note


def test_details_are_capped():
    (change,) = diff_values({"log": []}, {"log": list(range(MAX_DETAILS + 7))})
    assert len(change.details) == MAX_DETAILS and change.hidden == 7


def test_objects_of_one_type_compare_their_fields():
    old = {"__type__": "app.Model", "ext": 5, "value": {"a": 1, "b": 2}}
    new = {"__type__": "app.Model", "ext": 5, "value": {"a": 1, "b": 3}}
    (change,) = diff_values({"m": old}, {"m": new})
    assert details(change) == [("b", "changed", "2 → 3")]
