from tools.schemas import DEFAULT_DIR, render_all


def test_committed_json_schemas_match_the_message_models() -> None:
    expected = render_all()
    committed = {path.name: path.read_bytes() for path in DEFAULT_DIR.glob("*.json")}
    stale = sorted(name for name in expected.keys() | committed.keys()
                   if expected.get(name) != committed.get(name))
    assert not stale, f"docs/schemas is stale for {stale}: run `make schemas`"
