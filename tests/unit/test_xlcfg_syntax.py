"""Reference 18 "Syntax": the xl.cfg file format of libxlu_cfg_l.l / libxlu_cfg_y.y."""

import pytest

from cluster.xlcfg.syntax import Atom, ListValue, XlCfgError, c_strtol, parse


def _values(text: str) -> dict:
    def plain(v):
        return [plain(i) for i in v.items] if isinstance(v, ListValue) else v.text
    return {k: plain(s.value) for k, s in parse(text).settings.items()}


def _error(text: str, filename: str = "guest.cfg") -> XlCfgError:
    with pytest.raises(XlCfgError) as e:
        parse(text, filename=filename)
    return e.value


def test_xlcfg_18_settings_end_at_newline_or_semicolon():
    assert _values('a = "x"; b = 1\nc = 2;\n\n;;d = 3') == {"a": "x", "b": "1", "c": "2", "d": "3"}


def test_xlcfg_18_two_settings_on_one_line_need_a_separator():
    e = _error('a = 1 b = 2\n')
    assert e.line == 1 and "syntax error" in str(e)


def test_xlcfg_18_hash_comment_runs_to_end_of_line():
    text = '# header\nname = "d" # trailing "comment" = [\nmemory = 64#x\n# last, no newline'
    assert _values(text) == {"name": "d", "memory": "64"}


def test_xlcfg_18_single_and_double_quotes_are_both_strings():
    assert _values("""a = 'it"s'\nb = "it's"\n""") == {"a": 'it"s', "b": "it's"}


def test_xlcfg_18_string_escapes_follow_libxlu_dequote():
    text = r'''a = "tab\there\nq\"\\"
b = 'single \' quote'
c = "\x41\102\a\b\f\r\v"
'''
    assert _values(text) == {"a": 'tab\there\nq"\\', "b": "single ' quote",
                             "c": "AB\a\b\f\r\v"}


def test_xlcfg_18_unknown_escape_is_an_error_with_line():
    e = _error('a = 1\nb = "bad \\q escape"\n')
    assert e.line == 2 and "backslash" in e.message


def test_xlcfg_18_numbers_are_atoms_kept_as_text():
    cfg = parse("a = 0x1f\nb = 017\nc = 42\n")
    assert cfg.get("a").value == Atom("0x1f", 1, quoted=False)
    assert [c_strtol(cfg.get(k).value.text) for k in "abc"] == [31, 15, 42]


@pytest.mark.parametrize("text,value", [
    ("42", 42), ("0", 0), ("017", 15), ("0x1F", 31), ("0X10", 16), ("-5", -5), ("+7", 7),
    (" 12", 12), ("9223372036854775807", (1 << 63) - 1),
])
def test_xlcfg_18_numbers_decimal_octal_hex_as_strtol(text, value):
    assert c_strtol(text) == value


@pytest.mark.parametrize("text", ["", "08", "0x", "12 ", "1e3", "abc", "1.5",
                                  "9223372036854775808"])
def test_xlcfg_18_non_numbers_are_refused_by_strtol(text):
    with pytest.raises(ValueError):
        c_strtol(text)


def test_xlcfg_18_number_token_stops_at_uppercase():
    e = _error("memory = 0x1F\n")  # lexes as NUMBER "0x1" then IDENT "F", as flex does
    assert e.line == 1 and "`F'" in e.message


def test_xlcfg_18_lists_nest_and_keep_item_order():
    assert _values('a = [ "x", [ 1, [ "y" ] ], [] ]') == {"a": ["x", ["1", ["y"]], []]}


def test_xlcfg_18_lists_span_lines_with_trailing_comma_and_comments():
    text = 'disk = [\n  "a", # first\n\n  "b",\n]\nname = "n"\n'
    cfg = parse(text)
    assert _values(text) == {"disk": ["a", "b"], "name": "n"}
    assert cfg.get("disk").line == 1
    assert [item.line for item in cfg.get("disk").value.items] == [2, 4]
    assert cfg.get("name").line == 6


def test_xlcfg_18_empty_list_and_list_of_one():
    assert _values("a = []\nb = [\n]\nc = [ '' ]") == {"a": [], "b": [], "c": [""]}


@pytest.mark.parametrize("text", ["a = [ , ]", "a = [ 1,, 2 ]", "a = [ 1 2 ]", "a = [ ; ]"])
def test_xlcfg_18_malformed_lists_are_syntax_errors(text):
    assert "syntax error" in _error(text).message


def test_xlcfg_18_every_value_remembers_its_line():
    cfg = parse('\n\nname = "x"\n\nmemory = 3\n')
    assert cfg.get("name").line == 3 and cfg.get("memory").value.line == 5


def test_xlcfg_18_duplicate_key_last_one_wins_as_libxlu_find():
    cfg = parse('memory = 1\nname = "a"\nmemory = 2\n')
    assert cfg.get("memory").value.text == "2" and cfg.get("memory").line == 3
    assert list(cfg.settings) == ["memory", "name"]


def test_xlcfg_18_plus_equals_appends_strings_and_lists():
    cfg = parse('extra = "a"\nextra += " b"\ndisk = ["x"]\ndisk += ["y", "z"]\nnew += "s"\n')
    assert cfg.get("extra").value.text == "a b" and cfg.get("extra").op == "+="
    assert [i.text for i in cfg.get("disk").value.items] == ["x", "y", "z"]
    assert cfg.get("new").value.text == "s"


def test_xlcfg_18_plus_equals_refuses_list_with_string():
    e = _error('disk = ["x"]\ndisk += "y"\n')
    assert (e.line, e.key) == (2, "disk") and "can't add" in e.message


def test_xlcfg_18_keys_are_identifiers_upper_and_underscore_allowed():
    assert _values("_Key_1 = 1\nCamel = 2") == {"_Key_1": "1", "Camel": "2"}


def test_xlcfg_18_crlf_line_ends_are_accepted():
    assert _values('name = "x"\r\nmemory = 1\r\n') == {"name": "x", "memory": "1"}


def test_xlcfg_18_error_unterminated_string_names_file_and_line():
    e = _error('name = "ok"\nkernel = "/boot/vmlinuz\nmemory = 1\n')
    assert (e.filename, e.line) == ("guest.cfg", 2)
    assert str(e).startswith("guest.cfg:2: ") and "unterminated string" in str(e)


def test_xlcfg_18_error_missing_equals():
    e = _error('name = "x"\nmemory 128\n')
    assert e.line == 2 and "expecting `=' or `+='" in e.message


def test_xlcfg_18_error_bad_token_is_lexical():
    e = _error('name = "x"\nmemory = 128 @ 2\n')
    assert e.line == 2 and "lexical error" in e.message and "`@'" in e.message


def test_xlcfg_18_error_python_syntax_gets_a_hint():
    e = _error('name = "x"\nmemory = 128 * (1 + 1)\n')
    assert e.line == 2 and "Python" in e.message


def test_xlcfg_18_error_unclosed_list_names_where_it_opened():
    e = _error('name = "x"\ndisk = [ "a",\n  "b"\n')
    assert "unclosed list" in e.message and "line 2" in e.message


def test_xlcfg_18_error_unquoted_string_value_hints_quotes():
    e = _error("name = guest\n")
    assert e.line == 1 and "must be quoted" in e.message


def test_xlcfg_18_error_value_missing():
    e = _error("name =\nmemory = 1\n")
    assert e.line == 1 and "unexpected end of line" in e.message


def test_xlcfg_18_deep_nesting_is_refused_not_a_crash():
    e = _error("a = " + "[" * 200 + "]" * 200)
    assert "nested" in e.message


def test_xlcfg_error_str_is_file_line_key_message():
    assert str(XlCfgError("bad", filename="f.cfg", line=3, key="memory")) == "f.cfg:3: memory: bad"
    assert str(XlCfgError("bad")) == "bad"
    located = XlCfgError("bad", line=9).located(filename="f", line=1, key="k")
    assert (located.filename, located.line, located.key) == ("f", 9, "k")


def test_xlcfg_a_negative_number_says_what_is_wrong_with_the_value():
    """libxlu's lexer has no signed numbers; the error names the key and says so, rather than
    calling the file Python (``memory = -5``)."""
    with pytest.raises(XlCfgError) as e:
        parse('name = "n"\nmemory = -5\n')
    assert (e.value.line, e.value.key) == (2, "memory")
    assert "`-5' is not a valid value" in e.value.message and "Python" not in e.value.message
