"""Model text is made safe for the terminal (issue 15 item 11)."""

from chatrwkv.termtext import terminal_safe


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
        else:
            assert out == ch


def test_chunks_filter_like_the_whole():
    text = "ab\x1b[31mcd\r\nef\x9b"
    assert "".join(terminal_safe(text[i:i + 3]) for i in range(0, len(text), 3)) == \
        terminal_safe(text)
