"""Model text is made safe for the terminal (issue 15 items 11 and the bidi leftover)."""

from chatrwkv.termtext import terminal_safe

BIDI = {0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069}
DEPRECATED_FORMAT = set(range(0x206A, 0x2070))


def test_controls_become_visible_and_newline_tab_stay():
    assert terminal_safe("a\tb\nc") == "a\tb\nc"
    assert terminal_safe("\x1b[2J\x1b]0;title\x07") == "␛[2J␛]0;title␇"
    assert terminal_safe("line\r\nnext\rover") == "line\nnextover"
    assert terminal_safe("\x00\x08\x7f") == "␀␈␡"
    assert terminal_safe("\x9b31m\x9d0;t\x9c") == "\ufffd31m\ufffd0;t\ufffd"  # C1 CSI/OSC/ST


def test_every_control_is_filtered_and_nothing_else():
    for code in range(0x3000):
        ch = chr(code)
        out = terminal_safe(ch)
        if ch in "\n\t":
            assert out == ch
        elif code < 0x20 or 0x7F <= code <= 0x9F:
            assert len(out) <= 1 and not (out and (ord(out) < 0x20 or 0x7F <= ord(out) <= 0x9F))
        elif code in BIDI | DEPRECATED_FORMAT:
            assert out == "\ufffd"
        else:
            assert out == ch


def test_chunks_filter_like_the_whole():
    text = "ab\x1b[31mcd\r\nef\x9b"
    assert "".join(terminal_safe(text[i:i + 3]) for i in range(0, len(text), 3)) == \
        terminal_safe(text)


def test_trojan_source_bidi_overrides_become_visible():
    # what the text holds is "access = user" + RLO "nimda" PDF ...: on screen, unfiltered, the
    # override makes it read as if reversed; filtered, every override shows as U+FFFD
    text = "if access == \u202e\u2066nimda\u2069\u2066 user\u202c:"
    shown = terminal_safe(text)
    assert shown == "if access == \ufffd\ufffdnimda\ufffd\ufffd user\ufffd:"
    assert not any(ord(ch) in BIDI for ch in shown)


def test_right_to_left_text_and_emoji_keep_their_marks():
    hebrew = "\u05e9\u05dc\u05d5\u05dd\u200f!"       # RLM after a Hebrew word
    arabic = "\u0645\u0631\u062d\u0628\u0627\u061c 42"  # ALM
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # ZWJ sequence
    for text in (hebrew, arabic, family, "a\u200eb"):
        assert terminal_safe(text) == text


def test_piped_output_keeps_bidi_characters_raw():
    import io

    from chatrwkv.events import Chunk, ReplyEnd, ReplyStart
    from chatrwkv.ui import run_piped

    class OneReply:
        def handle(self, command):
            yield ReplyStart(speaker="Bot")
            yield Chunk(text="a\u202eb\x1b")
            yield ReplyEnd(stats=None, interrupted=False)

    out, err = io.StringIO(), io.StringIO()
    run_piped(OneReply(), ["hi\n"], out, err)
    assert out.getvalue() == "a\u202eb\x1b\n"


def test_terminal_ui_filters_bidi_in_replies_and_thinking():
    import io
    import types

    from rich.console import Console

    from chatrwkv.events import Chunk, ReplyEnd, ReplyStart, ThinkChunk
    from chatrwkv.stats import Stats
    from chatrwkv.ui import Terminal

    session = types.SimpleNamespace(prompt=types.SimpleNamespace(separator=":"))
    screen = io.StringIO()
    term = Terminal(session, console=Console(file=screen, highlight=False, color_system=None))
    stats = Stats(tokens=1, prefill_tokens=1, prefill_s=0.1, first_token_s=0.1, decode_s=0.1,
                  total_s=0.2)
    term.render([ReplyStart(speaker="Bo\u202eb"), ThinkChunk(text="x\u2067y"),
                 Chunk(text="a\u202db\u2069"), ReplyEnd(stats=stats, interrupted=False)])
    shown = screen.getvalue()
    assert "Bo\ufffdb: " in shown and "x\ufffdy" in shown and "a\ufffdb\ufffd" in shown
    assert not any(ord(ch) in BIDI for ch in shown)
