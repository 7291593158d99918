"""A chat session: text, templates, named snapshots, and ChatRWKV v2's command semantics.

Every command starts from a named `Snapshot` (state + last logits + token ids + transcript +
sampling settings) and saves the snapshots ChatRWKV does:

    message      chat      -> feed "{user}: {msg}\\n\\n{bot}:" -> chat_pre -> reply -> chat
                 (a G1 think mode adds its hint to {msg} and feeds its prefix, e.g. " <think",
                 from chat_pre before sampling; a turn that thought is closed as +set history says)
    +            chat_pre  -> reply -> chat
    +reset       chat_init -> chat
    +prompt F    zero      -> feed F's init -> chat_init, chat
    +system T    zero      -> feed "System: T\\n\\n" + the init -> chat_init, chat
    +gen/+i/+qq  zero      -> feed template -> gen_0 -> free text -> gen_1
    +qa          chat_init -> feed "{user}: {q}\\n\\n{bot}:" -> gen_0 -> free text -> gen_1
    ++           gen_0     -> free text -> gen_1
    +++          gen_1 (also saved as gen_0, so ++ resamples the continuation) -> gen_1

Snapshots are never mutated after they are saved (work happens on clones), so one snapshot can
sit under two names. Every turn that changes the slots becomes a node of the conversation tree
(conversation.py); `+` and `++` put their new reply beside the one they replace. The tree and file
commands live in treecommands.py, `+set`, `+show` and `+system` in settingcommands.py: parts the
session owns and dispatches to (the session is the top of its layer: nothing below imports it).
`handle()` yields events for the UI; nothing here prints.
"""

from __future__ import annotations

import codecs
import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from . import commands as C
from .chatreply import ReplyReader
from .chatsettings import CHAT_MAX_TOKENS, ChatOptions
from .conversation import DEFAULT_MAX_LIVE, Conversation, first_words
from .errors import ChatRWKVError
from .events import (  # noqa: F401 - re-exported: the UI and tests import events from here
    Chunk,
    Event,
    ExitRequested,
    Info,
    Problem,
    ReplyEnd,
    ReplyStart,
    ShowHelp,
    ShowSettings,
    ShowTranscript,
    ShowTree,
    Snapshot,
    Stats,
    ThinkChunk,
    TreeRow,
    Turn,
)
from .promptcache import PromptCache
from .prompts import Prompt, load_prompt
from .runtime import Cancelled, Runtime, Timing
from .sampling import (
    LogitRules,
    Penalty,
    Sampler,
    SamplingSettings,
    chat_newline_bias,
    qa_newline_bias,
    single_tokens,
)
from .sessionfile import states_dir
from .settingcommands import SettingCommands
from .state import State
from .stats import ReplyClock
from .templates import assistant_prefix, collapse_blank_lines, user_suffix
from .treecommands import TreeCommands

AVOID_REPEAT = "，：？！"  # ChatRWKV: a full-width punctuation mark never follows itself
SPLIT_CHAR_EXTRA = 16      # tokens allowed past --max-tokens to finish a split character
INSTRUCTION = ("\nBelow is an instruction that describes a task. Write a response that "
               "appropriately completes the request.\n\n# Instruction:\n{text}\n\n# Response:\n")


# command -> (node label, whether a repeat of the same label goes beside the current node)
TURNS: dict[type, tuple[str, bool]] = {
    C.Message: ("chat", False), C.Regenerate: ("chat", True), C.Generate: ("gen", False),
    C.Retry: ("gen", True), C.Continue: ("gen", False), C.Reset: ("reset", False),
}


class Session:
    """Owns the model's conversation. Set `cancel` (from a signal handler) to stop a reply."""

    def __init__(self, model, tokenizer, prompt: Prompt, *,
                 settings: SamplingSettings | None = None, seed: int | None = None,
                 max_tokens: int = 256, chat_max_tokens: int = CHAT_MAX_TOKENS,
                 runtime: Runtime | None = None, max_live: int = DEFAULT_MAX_LIVE,
                 states_folder: Path | None = None, options: ChatOptions | None = None,
                 prompt_cache: PromptCache | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.runtime = runtime or Runtime(model)
        self.prompt = prompt
        self.settings = settings or SamplingSettings()
        self.options = options or ChatOptions(max_tokens=max_tokens,
                                              chat_max_tokens=chat_max_tokens)
        self.generator = torch.Generator()
        self.reseed(seed)
        self.cancel = threading.Event()
        self.clock = time.perf_counter  # what the stats line reads (tests set a fake one)
        self.slots: dict[str, Snapshot] = {}
        self.tree = Conversation(max_live)
        self.initial_state: State | None = None  # a mounted state-tuning start (+state)
        self.mounted_name: str | None = None
        self.states_folder = states_folder or states_dir()
        self.prompt_cache = prompt_cache  # the prompt's state between runs (promptcache.py)
        # The Pile model was trained on "\n\n" as 187, 187; World models see what encode gives.
        self.pile_fixup = tokenizer.name == "pile"
        nl, eot = tokenizer.newline_id, tokenizer.end_of_text_id
        no_repeat = single_tokens(tokenizer.encode, AVOID_REPEAT)
        self.chat_rules = LogitRules(banned=frozenset({eot}), no_repeat=no_repeat,
                                     newline_id=nl, newline_bias=chat_newline_bias)
        # RWKV-7 G1: the official chat demo (ChatRWKV API_DEMO_CHAT.py) only bans end-of-text
        self.g1_rules = LogitRules(banned=frozenset({eot}))
        self.free_rules = LogitRules(no_repeat=no_repeat)
        self.qa_rules = LogitRules(no_repeat=no_repeat, newline_id=nl,
                                   newline_bias=qa_newline_bias)
        self.tree_commands = TreeCommands(self)
        self.setting_commands = SettingCommands(self)

    # --- settings ------------------------------------------------------------------------------

    @property
    def max_tokens(self) -> int:
        return self.options.max_tokens

    @property
    def chat_max_tokens(self) -> int:
        return self.options.chat_max_tokens

    def think_mode(self) -> str:
        """The think mode in force: think modes are the G1 templates', so "off" elsewhere."""
        return self.options.think if self.prompt.style == "g1" else "off"

    # --- snapshots and feeding -----------------------------------------------------------------

    def reseed(self, seed: int | None) -> None:
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def zero(self) -> Snapshot:
        """The start of every conversation: zeros, or a mounted state-tuning state."""
        state = self.model.zero_state() if self.initial_state is None else self.initial_state
        return Snapshot(state, None, (), (), self.settings)

    def encode_fed(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text)
        if self.pile_fixup and text.endswith("\n\n") and ids[-1:] == [
                self.tokenizer.double_newline_id]:
            nl = self.tokenizer.newline_id
            ids = ids[:-1] + [nl, nl]
        return ids

    def feed(self, base: Snapshot, text: str, turns: tuple[Turn, ...], settings: SamplingSettings,
             timing: Timing | None = None, cancellable: bool = True) -> Snapshot:
        """A new snapshot: `base` advanced by `text`. Raises Cancelled (base untouched)."""
        ids = self.encode_fed(text)
        state = base.state.clone()
        logits = self.runtime.prefill(ids, state, timing=timing,
                                      cancel=self.cancel if cancellable else None)
        return Snapshot(state, logits, base.tokens + tuple(ids), base.transcript + turns, settings)

    def start(self, prompt: Prompt, label: str = "prompt") -> Timing:
        """Feed `prompt` (system prompt and init) from the zero state; it becomes `chat_init` and
        `chat` (a new node). A G1 prompt with no system prompt feeds nothing."""
        timing = Timing()
        snap = self._cached_prompt(prompt, timing)
        self.prompt = prompt
        self.slots = {k: v for k, v in self.slots.items() if k.startswith("gen_")}
        self.slots["chat_init"] = self.slots["chat"] = snap
        self.record(label, prompt.name)  # the tree shows "prompt NAME", "state NAME"
        return timing

    def _cached_prompt(self, prompt: Prompt, timing: Timing) -> Snapshot:
        """The prompt fed from the zero state, from `prompt_cache` when it has it (a mounted
        state-tuning start is not cached)."""
        text = prompt.start_text()  # system prompt and init; nothing for a bare G1 chat
        turns = (Turn("prompt", text),)
        if not text:
            return dataclasses.replace(self.zero(), transcript=turns)
        cache = self.prompt_cache if self.initial_state is None else None
        if cache is None:
            return self.feed(self.zero(), text, turns, self.settings, timing)
        ids = self.encode_fed(text)
        if (hit := cache.load(ids)) is not None:
            return Snapshot(hit[0], hit[1], tuple(ids), turns, self.settings)
        snap = self.feed(self.zero(), text, turns, self.settings, timing)
        cache.store(ids, snap.state, snap.logits)
        return snap

    def record(self, label: str, preview: str, sibling: bool = False,
               above: str | None = None) -> None:
        self.tree.add(self.slots, self.prompt, label, preview, sibling, above)

    def _record_turn(self, command: C.Command, before: dict[str, Snapshot]) -> None:
        turn = TURNS.get(type(command))
        if turn is None or before.keys() == self.slots.keys() and all(
                before[k] is self.slots[k] for k in before):
            return
        label, beside = turn
        main = self.slots["chat" if label != "gen" else "gen_1"]
        turns = main.transcript[-2:] if label != "reset" else ()
        preview = " → ".join(first_words(t.text, 32) for t in turns) or label
        current = self.tree.nodes[self.tree.current]
        # new free text does not continue the free text before it: it goes beside it
        self.record(label, preview, sibling=beside and current.label == label,
                    above="gen" if isinstance(command, C.Generate) else None)

    # --- the tree and file commands' entry points, used by the command line and the UI --------

    def where(self) -> str:
        return self.tree_commands.where()

    def load_named(self, name: str) -> None:
        self.tree_commands.load_named(name)

    def save_named(self, name: str) -> Path:
        return self.tree_commands.save_named(name)

    def mount(self, path: str | Path) -> None:
        self.tree_commands.mount(path)

    # --- commands ------------------------------------------------------------------------------

    def handle(self, command: C.Command) -> Iterator[Event]:
        """Run one command, yielding events. A failure is one Problem and changes nothing."""
        self.cancel.clear()
        name = "_on_" + type(command).__name__.lower()
        handler = next((h for part in (self, self.tree_commands, self.setting_commands)
                        if (h := getattr(part, name, None)) is not None), None)
        if handler is None:
            yield Problem(f"no handler for {type(command).__name__}")
            return
        settings = self.settings.with_overrides(command.overrides.temperature,
                                                command.overrides.top_p)
        before = dict(self.slots)
        try:
            yield from handler(command, settings)
            self._record_turn(command, before)
        except Cancelled:
            yield Info("stopped; nothing changed")
        except ChatRWKVError as e:
            yield Problem(str(e))

    def _on_empty(self, cmd: C.Empty, settings: SamplingSettings) -> Iterator[Event]:
        return iter(())

    def _on_parseerror(self, cmd: C.ParseError, settings: SamplingSettings) -> Iterator[Event]:
        yield Problem(cmd.message)

    def _on_help(self, cmd: C.Help, settings: SamplingSettings) -> Iterator[Event]:
        yield ShowHelp()

    def _on_exit(self, cmd: C.Exit, settings: SamplingSettings) -> Iterator[Event]:
        yield ExitRequested()

    def _on_reset(self, cmd: C.Reset, settings: SamplingSettings) -> Iterator[Event]:
        self.slots["chat"] = self.slots["chat_init"]
        self.slots.pop("chat_pre", None)  # `+` must not resurrect a message from before the reset
        yield Info("Chat reset.")

    def _on_loadprompt(self, cmd: C.LoadPrompt, settings: SamplingSettings) -> Iterator[Event]:
        prompt = load_prompt(cmd.path)
        timing = self.start(prompt)
        yield Info(f"Prompt '{prompt.name}' loaded ({timing.tokens} tokens): "
                   f"you are {prompt.user}, talking with {prompt.bot}.")

    def _on_message(self, cmd: C.Message, settings: SamplingSettings) -> Iterator[Event]:
        msg = collapse_blank_lines(cmd.text)
        p, think = self.prompt, self.think_mode()
        text = f"{p.turn(p.user, msg + user_suffix(think))}\n\n{p.turn(p.bot, '')}"
        clock, timing = ReplyClock(self.clock), Timing()
        pre = self.feed(self.slots["chat"], text, (Turn("user", msg),), settings, timing)
        clock.prefilled(timing.tokens)
        self.slots["chat_pre"] = pre
        yield from self._chat_reply(pre, settings, clock)

    def _on_regenerate(self, cmd: C.Regenerate, settings: SamplingSettings) -> Iterator[Event]:
        if "chat_pre" not in self.slots:
            yield Problem("nothing to regenerate yet: send a message first")
            return
        yield from self._chat_reply(self.slots["chat_pre"], settings, ReplyClock(self.clock))

    def _on_generate(self, cmd: C.Generate, settings: SamplingSettings) -> Iterator[Event]:
        p, rules, base = self.prompt, self.free_rules, self.zero()
        if cmd.kind == "gen":
            text = "\n" + cmd.text.strip()
        elif cmd.kind == "i":
            text = INSTRUCTION.format(text=collapse_blank_lines(cmd.text))
        elif cmd.kind == "qq":
            text = f"\nQ: {cmd.text.strip()}\nA:"
        else:  # "qa": the prompt's context, the history ignored
            base, rules = self.slots["chat_init"], self.qa_rules
            text = f"{p.turn(p.user, collapse_blank_lines(cmd.text))}\n\n{p.turn(p.bot, '')}"
        clock, timing = ReplyClock(self.clock), Timing()
        start = self.feed(base, text, (Turn("input", text),), settings, timing)
        clock.prefilled(timing.tokens)
        self.slots["gen_0"] = start
        yield from self._free_text(start, settings, rules, clock)

    def _on_retry(self, cmd: C.Retry, settings: SamplingSettings) -> Iterator[Event]:
        if "gen_0" not in self.slots:
            yield Problem("nothing to resample yet: use +gen, +i, +qq or +qa first")
            return
        yield from self._free_text(self.slots["gen_0"], settings, self._rules_of("gen_0"),
                                   ReplyClock(self.clock))

    def _on_continue(self, cmd: C.Continue, settings: SamplingSettings) -> Iterator[Event]:
        if "gen_1" not in self.slots:
            yield Problem("nothing to continue yet: use +gen, +i, +qq or +qa first")
            return
        self.slots["gen_0"] = self.slots["gen_1"]
        yield from self._free_text(self.slots["gen_1"], settings, self._rules_of("gen_1"),
                                   ReplyClock(self.clock))

    def _rules_of(self, slot: str) -> LogitRules:
        """`+qa` text keeps its newline rule when resampled or continued."""
        first = next((t for t in self.slots[slot].transcript if t.role == "input"), None)
        p = self.prompt
        is_qa = first is not None and first.text.startswith(p.turn(p.user, ""))
        return self.qa_rules if is_qa else self.free_rules

    # --- generation ----------------------------------------------------------------------------

    def _generation(self, start: Snapshot, settings: SamplingSettings, rules: LogitRules,
                    stop_tokens: frozenset[int]):
        assert start.logits is not None
        return self.runtime.generate(
            start.state.clone(), start.logits,
            sampler=Sampler(settings.temperature, settings.top_p, settings.top_k),
            penalty=Penalty(start.logits.shape[-1], settings.presence, settings.frequency,
                            settings.decay),
            rules=rules, generator=self.generator,
            last_token=start.tokens[-1] if start.tokens else None,
            stop_tokens=stop_tokens, cancel=self.cancel)

    def _chat_reply(self, pre: Snapshot, settings: SamplingSettings,
                    clock: ReplyClock) -> Iterator[Event]:
        """Sample a reply after `pre` (and the think mode's prefix) until a blank line or the
        user's name; save `chat`."""
        p, think = self.prompt, self.think_mode()
        prefix = assistant_prefix(think)
        if prefix:  # the think mode's prefix is input too: the clock counts it as prefill
            fed = Timing()
            start = self.feed(pre, prefix, (), settings, fed)
            clock.prefilled(fed.tokens)
        else:
            start = pre
        rules = self.g1_rules if p.style == "g1" else self.chat_rules
        gen = self._generation(start, settings, rules, frozenset())
        stream = self.tokenizer.stream()
        reader = ReplyReader(prefix, ("\n\n", "\n" + p.turn(p.user, "")), p.style == "g1")
        thinking_tokens = 0
        yield ReplyStart(p.bot)
        for _ in gen:
            yield from reader.feed(stream.feed(gen.tokens[-1]))
            clock.token()
            if not thinking_tokens:
                sp = reader.split()
                if sp.think_at is not None and sp.closed:
                    thinking_tokens = len(gen.tokens)
            if reader.stopped or len(gen.tokens) >= self.chat_max_tokens:
                break
        fed_text = reader.text + stream.flush()
        yield from reader.finish()
        kept, sp = reader.kept(), reader.split(final=True)
        if sp.think_at is not None and not thinking_tokens:
            thinking_tokens = len(gen.tokens)  # it never closed: all thinking
        thinking, answer = sp.thinking.strip(), sp.answer.strip()
        if not thinking:
            thinking_tokens = 0  # a fast reply's ">": no thought to count
        turns = ((Turn("think", thinking),) if thinking else ()) + (Turn("bot", answer),)
        if sp.think_at is not None and self.options.history == "answer":
            # as the templates lay out an earlier turn: "Assistant: <answer>\n\n", no thinking
            text = (" " + answer if answer else "") + "\n\n"
            done = self.feed(pre, text, turns, settings, cancellable=False)
        else:
            done = self._close_turn(start, gen, fed_text, kept + "\n\n", turns, settings)
        self.slots["chat"] = done
        yield ReplyEnd(dataclasses.replace(clock.finish(), thinking=thinking_tokens),
                       gen.stopped_by_user)

    def _close_turn(self, start: Snapshot, gen, fed_text: str, target: str,
                    turns: tuple[Turn, ...], settings: SamplingSettings) -> Snapshot:
        """The state after `start` + `target`, from what was sampled: close the turn as a finished
        reply is closed, so state and transcript stay in step."""
        transcript = start.transcript + turns
        if fed_text == target:
            return Snapshot(gen.state, gen.logits, start.tokens + tuple(gen.tokens), transcript,
                            settings)
        if target.startswith(fed_text):
            after = Snapshot(gen.state, gen.logits, start.tokens + tuple(gen.tokens), (),
                             settings)
            done = self.feed(after, target[len(fed_text):], (), settings, cancellable=False)
            return dataclasses.replace(done, transcript=transcript)
        # the sampled tokens ran past the stop: re-read the kept reply from `start`
        return self.feed(start, target, turns, settings, cancellable=False)

    def _free_text(self, start: Snapshot, settings: SamplingSettings, rules: LogitRules,
                   clock: ReplyClock) -> Iterator[Event]:
        """Free text after `start` until end-of-text or max tokens; save `gen_1`."""
        gen = self._generation(start, settings, rules,
                               frozenset({self.tokenizer.end_of_text_id}))
        stream = self.tokenizer.stream()
        pieces: list[str] = []
        yield ReplyStart(None)
        for token in gen:
            piece = stream.feed(token)
            clock.token()
            if piece:
                pieces.append(piece)
                yield Chunk(piece)
            n = len(gen.tokens)
            if n >= self.max_tokens and (n >= self.max_tokens + SPLIT_CHAR_EXTRA
                                         or _complete_utf8(self.tokenizer, gen.tokens)):
                break
        rest = stream.flush()
        if rest:
            pieces.append(rest)
            yield Chunk(rest)
        self.slots["gen_1"] = Snapshot(gen.state, gen.logits, start.tokens + tuple(gen.tokens),
                                       start.transcript + (Turn("text", "".join(pieces)),),
                                       settings)
        yield ReplyEnd(clock.finish(), gen.stopped_by_user)


def _complete_utf8(tokenizer, ids: list[int]) -> bool:
    """True when the generated bytes end on a character boundary."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    decoder.decode(tokenizer.decode_bytes(ids[-8:]), final=False)
    return not decoder.getstate()[0]
