import pytest

from shared.templating import Template, missing_names, recipient_values


def test_parse_and_render() -> None:
    template = Template.parse("{{name}} 様、{{plan}} プランです ({{email}})", html=False)
    assert template.names == frozenset({"name", "plan", "email"})
    values = {"name": "山田", "plan": "gold", "email": "a@example.com"}
    assert template.render(values) == "山田 様、gold プランです (a@example.com)"


def test_text_without_placeholders_renders_as_is() -> None:
    template = Template.parse("no placeholders {here} { {x} }", html=True)
    assert template.names == frozenset()
    assert template.render({}) == "no placeholders {here} { {x} }"


def test_spaces_inside_braces() -> None:
    template = Template.parse("{{ name }}/{{name}}/{{  plan.level-2_x}}", html=False)
    assert template.names == frozenset({"name", "plan.level-2_x"})
    assert template.render({"name": "N", "plan.level-2_x": "P"}) == "N/N/P"


@pytest.mark.parametrize("source", ["{{two words}}", "{{}}", "{{ }}", "{{a/b}}", "{name}"])
def test_not_a_placeholder_stays_literal(source: str) -> None:
    template = Template.parse(source, html=False)
    assert template.names == frozenset()
    assert template.render({}) == source


def test_adjacent_and_repeated_placeholders() -> None:
    template = Template.parse("{{a}}{{b}}{{a}}", html=False)
    assert template.render({"a": "1", "b": "2"}) == "121"
    assert Template.parse("{{{a}}}", html=False).render({"a": "x"}) == "{x}"


def test_values_are_not_parsed_again() -> None:
    template = Template.parse("{{a}}", html=False)
    assert template.render({"a": "{{b}}"}) == "{{b}}"


def test_html_escapes_values_not_the_template() -> None:
    values = {"v": "<b>\"x\" & 'y'</b>"}
    html = Template.parse('<p title="{{v}}">{{v}}</p>', html=True)
    assert html.render(values) == (
        '<p title="&lt;b&gt;&quot;x&quot; &amp; &#x27;y&#x27;&lt;/b&gt;">'
        "&lt;b&gt;&quot;x&quot; &amp; &#x27;y&#x27;&lt;/b&gt;</p>")
    text = Template.parse("{{v}}", html=False)
    assert text.render(values) == values["v"]


def test_missing_names() -> None:
    template = Template.parse("{{name}} {{plan}} {{email}}", html=False)
    values = recipient_values("a@example.com", None, {"other": "x"})
    assert missing_names(template.names, values) == {"name", "plan"}
    full = recipient_values("a@example.com", "A", {"plan": "gold"})
    assert missing_names(template.names, full) == set()


def test_recipient_values_own_fields_win() -> None:
    values = recipient_values("a@example.com", "A", {"name": "B", "email": "b@x", "k": "v"})
    assert values == {"email": "a@example.com", "name": "A", "k": "v"}


def test_recipient_values_without_name_ignores_vars_name() -> None:
    values = recipient_values("a@example.com", None, {"name": "B"})
    assert values == {"email": "a@example.com"}
