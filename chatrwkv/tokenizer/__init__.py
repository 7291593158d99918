"""Tokenizers (World and Pile), chosen from the model's vocabulary size.

Interface every tokenizer implements (see `base.py`):
    name: str                      "world", "pile", or the custom file's name
    vocab_size: int                model embedding rows it fits (65536 World, 50277 Pile)
    encode(text: str) -> list[int]
    decode(ids) -> str             invalid UTF-8 becomes U+FFFD; unknown ids never crash
    decode_bytes(ids) -> bytes
    stream() -> StreamDecoder      feed(id) -> str (complete characters only), flush() -> str
    newline_id: int                "\n"
    double_newline_id: int         "\n\n" as one token (World 261, Pile 535)
    end_of_text_id: int            0 for both
"""
