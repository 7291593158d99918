"""Command line: `chatrwkv [options]` chats; `chatrwkv pull|list|info|bench|train ...` dispatch."""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from collections.abc import Callable, MutableMapping
from pathlib import Path

from . import __version__
from .commands import check_temperature, check_top_p
from .errors import ChatRWKVError
from .typeahead import quiet_keys

SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes a 64-bit seed

# name -> (module, whether the module's argv starts at the subcommand name)
SUBCOMMANDS: dict[str, tuple[str, bool]] = {
    "pull": ("chatrwkv.hub", True),
    "list": ("chatrwkv.hub", True),
    "info": ("chatrwkv.hub", True),
    "bench": ("chatrwkv.bench", False),
    "train": ("chatrwkv.training.cli", False),
    "cache": ("chatrwkv.cachecmd", False),
}

NO_MODEL = ("chatrwkv: no model given and the demo model is missing from this install. Start "
            "with `chatrwkv --model PATH` (an RWKV .pth or .safetensors checkpoint), or "
            "`chatrwkv pull NAME` to fetch an official one.")

EPILOG = """\
in the chat:
  type a message and press Enter; Alt+Enter (or Esc then Enter) adds a new line,
  or start a block with a line of three double quotes and end it the same way.
  +help lists the commands (+gen, +qa, +, ++, +++, +reset, +prompt FILE, ...).
  -temp=X and -top_p=Y in a line apply to that line only; +set KEY VALUE changes a setting
  for the rest of the chat, +show lists them; +think MODE, +system TEXT (G1 models).
  Ctrl-C stops a reply (it stays in the conversation); Ctrl-D or +exit leaves and saves
  the session as 'last' (`--resume` continues it). +undo, +branch NAME, +switch NAME, +tree,
  +goto N, +save NAME, +load NAME, +export md|json FILE, +import FILE, +state FILE: see +help.

piped input (stdin not a terminal): each line is a message or command, replies go to stdout:
  printf 'hi\\n+gen Once upon a time\\n' | chatrwkv --model M

other commands:
  chatrwkv list | pull NAME | info MODEL   official models: list, download, inspect
  chatrwkv bench ...                       speed table
  chatrwkv train ...                       train the tiny demo model
"""


def _number(check):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        problem = check(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value
    return parse


def _setting(name: str):
    from .samplingsettings import setting_problem

    return _number(lambda v: setting_problem(name, v))


def _whole(minimum: int, maximum: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text[:40]!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}")
        return value
    return parse


_positive_int = _whole(1)


def build_parser() -> argparse.ArgumentParser:
    from .chatsettings import CHAT_MAX_TOKENS, G1_CHAT_MAX_TOKENS, HISTORY_MODES
    from .samplingsettings import SamplingSettings
    from .templates import THINK_MODES

    d = SamplingSettings()
    ap = argparse.ArgumentParser(
        prog="chatrwkv", description="Chat with an RWKV language model (v4, v5, v6, v7) in the "
        "terminal.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"chatrwkv {__version__}")
    m = ap.add_argument_group("model")
    m.add_argument("--model", metavar="PATH", help="checkpoint file (.pth / .safetensors) or the "
                   "name of a model fetched with `chatrwkv pull` (default: the tiny Shakespeare "
                   "demo model shipped with chatrwkv)")
    m.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    m.add_argument("--dtype", choices=["fp32", "bf16", "fp16", "int8", "int4"],
                   help="weight precision (default: fp32 on CPU, fp16 on CUDA; int8: 8-bit "
                   "weights with per-channel scales, CPU only; int4: 4-bit weights with a scale "
                   "per 32, CPU only)")
    m.add_argument("--chunk-len", type=_positive_int, default=256, metavar="N",
                   help="tokens per parallel prefill chunk (default 256)")
    m.add_argument("--threads", type=_positive_int, metavar="N",
                   help="CPU threads for the model (default: torch's, one per core)")
    m.add_argument("--tokenizer", metavar="PATH",
                   help="tokenizer file (default: World or Pile, from the vocabulary size)")
    c = ap.add_argument_group("conversation")
    c.add_argument("--prompt", metavar="FILE", help="prompt file (TOML) or a shipped prompt name: "
                   "english-world, english-pile, chinese, english-qa (default follows the "
                   "tokenizer)")
    c.add_argument("--resume", nargs="?", const="last", metavar="NAME",
                   help="continue a saved session (default: 'last', this model's conversation, "
                   "saved when a chat ends; +sessions lists every model's); sessions live in "
                   "$CHATRWKV_HOME/states (default ~/.local/state/chatrwkv)")
    c.add_argument("--state", metavar="FILE", help="start from a state-tuning file (.pth with "
                   "blocks.N.att.time_state, or its safetensors .state form; v5, v6, v7)")
    c.add_argument("--no-autosave", action="store_true",
                   help="do not save the session as 'last' when the chat ends")
    c.add_argument("--max-tokens", type=_positive_int, default=256, metavar="N",
                   help="length of free generation (+gen, +i, +qq, +qa; default 256)")
    c.add_argument("--chat-max-tokens", type=_positive_int, metavar="N",
                   help=f"longest chat reply (default {CHAT_MAX_TOKENS}; G1 models "
                   f"{G1_CHAT_MAX_TOKENS}, thinking included)")
    c.add_argument("--think", choices=list(THINK_MODES), help="think mode of a G1 chat "
                   "(default fast for RWKV-7 World models: the official fake think)")
    c.add_argument("--history", choices=list(HISTORY_MODES),
                   help="what a turn that thought leaves in the state: the answer only (default, "
                   "as the G1 templates lay out earlier turns) or the full reply")
    c.add_argument("--system", metavar="TEXT", help="system prompt (\"System: TEXT\" starts "
                   "the conversation)")
    c.add_argument("--show-thinking", action="store_true",
                   help="piped mode: print a reply's thinking too (as <think>...</think>)")
    c.add_argument("--verbose", action="store_true", help="piped mode: each reply's stats line "
                   "(first token, prefill and decode speed, end to end) on stderr")
    s = ap.add_argument_group("sampling (default: the model's, see README; ChatRWKV v2's "
                              f"T {d.temperature} top-p {d.top_p} for v4/v5/v6 and Pile)")
    s.add_argument("--temp", type=_number(check_temperature), metavar="T",
                   help="temperature, 0 = greedy")
    s.add_argument("--top-p", type=_number(check_top_p), metavar="P", help="nucleus cutoff")
    s.add_argument("--top-k", type=_whole(0, 2**31 - 1), metavar="K",
                   help="keep only the K likeliest tokens, 0 = off (default 0)")
    s.add_argument("--presence", type=_setting("presence"), metavar="X", help="presence penalty")
    s.add_argument("--frequency", type=_setting("frequency"), metavar="X",
                   help="frequency penalty")
    s.add_argument("--decay", type=_setting("decay"), metavar="X", help="penalty decay per generated token")
    s.add_argument("--seed", type=_whole(0, SEED_MAX), help="random seed, for a reproducible transcript")
    return ap


def quiet_openmp(env: MutableMapping[str, str]) -> None:
    """Let torch's OpenMP threads sleep, not spin, between parallel regions, unless the user
    chose otherwise. They spin for a while after every parallel op by default; in a reply that
    is after every sampling step, while the C step's own pool wants the cores: with one other
    busy process on 2 cores a 200-token reply took 44 s instead of 3 (issue 15). OpenMP reads
    this once, when torch loads it, so the entry point sets it before the first torch import."""
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _dispatch(name: str, argv: list[str]) -> int:
    module_name, with_name = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not module_name.startswith(e.name):
            raise
        print(f"chatrwkv: `chatrwkv {name}` is not available in this installation",
              file=sys.stderr)
        return 2
    return int(module.main(argv if with_name else argv[1:]) or 0)


def _resolve_model(spec: str) -> Path:
    from .safeio import expand

    path = expand(spec)
    if path.exists():
        return path
    try:
        from .modelstore import resolve_model
    except ImportError:
        return path  # the loader gives the one-line "no such file"
    return resolve_model(spec)


# Below this many bytes of weights one thread decodes fastest: waking a second thread costs more
# than its share of the work. Measured on the 36 MB demo model (2-core Xeon, quiet, 200-token
# `+gen`, whole command): 1 thread 3.05-3.33 s, 2 threads 4.4-5.0 s.
SMALL_MODEL_BYTES = 64 << 20


def default_threads(model_path: Path) -> int | None:
    """Threads when `--threads` is not given: 1 for a small model, else torch's default."""
    try:
        return 1 if model_path.stat().st_size < SMALL_MODEL_BYTES else None
    except OSError:
        return None


def set_threads(threads: int | None) -> None:
    """torch's thread count, in the calling thread (an OpenMP setting is per thread)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def build_session(args: argparse.Namespace, model_path: Path):
    """Load the model, its tokenizer and the prompt; read the prompt into the state."""
    import dataclasses

    from .chatsettings import ChatOptions, profile_for
    from .models import load_model
    from .promptcache import PromptCache
    from .prompts import load_prompt
    from .session import Session
    from .templates import clean_text
    from .tokenizer import load_tokenizer

    set_threads(args.threads or default_threads(model_path))  # before the load: the C pool too
    model = load_model(model_path, device=args.device, dtype=args.dtype, chunk_len=args.chunk_len)
    tokenizer = load_tokenizer(model.config.vocab_size, args.tokenizer)
    profile = profile_for(model.config.version, tokenizer.name)  # version + vocabulary decide
    prompt = load_prompt(args.prompt or profile.prompt)
    if args.system is not None:
        prompt = dataclasses.replace(prompt, system=clean_text(args.system))
    given = {k: v for k, v in (("temperature", args.temp), ("top_p", args.top_p),
                               ("top_k", args.top_k), ("presence", args.presence),
                               ("frequency", args.frequency), ("decay", args.decay))
             if v is not None}
    options = {k: v for k, v in (("think", args.think), ("history", args.history),
                                 ("chat_max_tokens", args.chat_max_tokens)) if v is not None}
    defaults = ChatOptions(think=profile.think, max_tokens=args.max_tokens,
                           chat_max_tokens=profile.chat_max_tokens)
    session = Session(model, tokenizer, prompt, seed=args.seed,
                      settings=dataclasses.replace(profile.sampling, **given),
                      options=dataclasses.replace(defaults, **options),
                      prompt_cache=PromptCache(model))
    if args.resume:
        # no prefill at all: the file holds the states and the settings; its sampler state
        # continues the session; settings given on the command line win
        from . import ui
        from .autosave import resume

        note = resume(session, args.resume)
        if note:
            ui.print_note(note)
        session.settings = dataclasses.replace(session.settings, **given)
        session.options = dataclasses.replace(session.options, **options)
    elif args.state:
        session.mount(args.state)  # the prompt is read after the tuned state
    else:
        session.start(prompt)
    return session


def resume_command(model: str | None) -> str:
    """The command line that continues the autosaved chat (no --model for the demo model)."""
    return "chatrwkv --resume" if model is None else \
        f"chatrwkv --model {shlex.quote(model)} --resume"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_openmp(os.environ)  # first: the parser's defaults already import torch
    if argv and argv[0] in SUBCOMMANDS:
        return _dispatch(argv[0], argv)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return _chat(argv, interactive=False, give_back_echo=lambda: None)
    # Keys typed while chatrwkv starts (torch's import, the model's load) are not echoed where
    # the cursor happens to be: they wait, unseen, for the first prompt, which shows them once.
    # The terminal's echo showed them twice ("hello thereRomeo: hello there"). The prompt
    # itself runs in raw mode, so the echo's absence changes nothing there.
    with quiet_keys() as give_back_echo:
        return _chat(argv, interactive=True, give_back_echo=give_back_echo)


def _chat(argv: list[str], interactive: bool, give_back_echo: Callable[[], None]) -> int:
    """The chat (not a subcommand), in a terminal or piped."""
    args = build_parser().parse_args(argv)
    from . import ui
    from .defaults import DEMO_BANNER, DEMO_MODEL, DEMO_PROMPT

    model_given = args.model
    if args.model is None:
        if not DEMO_MODEL.is_file():
            print(NO_MODEL, file=sys.stderr)
            return 2
        args.model = str(DEMO_MODEL)
        args.prompt = args.prompt or DEMO_PROMPT
        ui.print_note(DEMO_BANNER)

    if interactive and args.prompt and not args.resume:
        return _chat_while_loading(args, resume_command(model_given), give_back_echo)
    try:
        session = build_session(args, _resolve_model(args.model))
    except ChatRWKVError as e:
        ui.print_error(str(e))
        return 1
    except KeyboardInterrupt:
        return 130
    return ui.run(session, interactive=interactive,
                  save_at_exit=not args.no_autosave, resume_command=resume_command(model_given),
                  show_thinking=args.show_thinking, verbose=args.verbose)


def _chat_while_loading(args: argparse.Namespace, resume: str,
                        give_back_echo: Callable[[], None]) -> int:
    """The terminal chat when its prompt is known before the model (the demo model, --prompt):
    the prompt shows at once and the model loads on a thread (torch's import and the load are
    most of a start); the first command waits for it (see backgroundload.py). Piped mode never
    comes here: it loads first, so its output cannot depend on timing."""
    from . import ui
    from .backgroundload import BackgroundLoad
    from .prompts import load_prompt

    try:
        prompt = load_prompt(args.prompt)
        model_path = _resolve_model(args.model)
    except ChatRWKVError as e:
        ui.print_error(str(e))
        return 1
    except KeyboardInterrupt:
        return 130
    threads = args.threads or default_threads(model_path)
    loading = BackgroundLoad(lambda: build_session(args, model_path),
                             then=lambda _: set_threads(threads))
    code = ui.run(None, interactive=True, save_at_exit=not args.no_autosave,
                  resume_command=resume, loading=loading, prompt=prompt)
    if not loading.done():
        # left before the load ended (Ctrl-D, Ctrl-C while waiting): nothing to save, and a
        # thread still importing torch must not meet the interpreter's shutdown
        sys.stdout.flush()
        sys.stderr.flush()
        give_back_echo()  # no `finally` runs past os._exit
        os._exit(code)
    return code
