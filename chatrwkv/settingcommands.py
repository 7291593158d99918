"""`+set KEY VALUE` (and `+think MODE`), `+show` and `+system TEXT`: the settings of the rest of
the chat, over a host (the `Session`, which owns one of these and dispatches the commands to it)
through the narrow `SettingsHost` interface; this module never imports the session."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Protocol

import torch

from . import commands as C
from .chatsettings import ChatOptions, apply_setting, setting_value
from .events import Event, Info, ShowSettings
from .prompts import Prompt
from .runtime import Timing
from .sampling import SamplingSettings
from .templates import clean_text


class SettingsHost(Protocol):
    """What these commands need from the session."""

    model: object
    tokenizer: object
    prompt: Prompt
    settings: SamplingSettings
    options: ChatOptions
    mounted_name: str | None

    def think_mode(self) -> str: ...
    def start(self, prompt: Prompt, label: str = "prompt") -> Timing: ...


class SettingCommands:
    """The handlers (`_on_<command>`) over `host`."""

    def __init__(self, host: SettingsHost):
        self.s = host

    def _on_setsystem(self, cmd: C.SetSystem, settings: SamplingSettings) -> Iterator[Event]:
        prompt = dataclasses.replace(self.s.prompt, system=clean_text(cmd.text))
        timing = self.s.start(prompt, label="system")
        yield Info((f"system prompt set ({timing.tokens} tokens)" if prompt.system
                    else "system prompt cleared") + "; the conversation starts over")

    def _on_setoption(self, cmd: C.SetOption, settings: SamplingSettings) -> Iterator[Event]:
        h = self.s
        h.settings, h.options, name = apply_setting(h.settings, h.options, cmd.key, cmd.value)
        yield Info(f"{name} = {setting_value(self.s.settings, self.s.options, name)}")
        if name == "think" and self.s.think_mode() != self.s.options.think:
            yield Info(f"(prompt '{self.s.prompt.name}' is not a G1 chat: think modes apply "
                       "after +prompt g1)")

    def _on_showsettings(self, cmd: C.ShowSettings, settings: SamplingSettings
                         ) -> Iterator[Event]:
        yield ShowSettings(self.settings_rows())

    def settings_rows(self) -> tuple[tuple[str, str], ...]:
        """What `+show` prints: the model, the prompt, every setting."""
        h = self.s
        m, p = h.model, h.prompt
        c = getattr(m, "config", None)
        rows = [("model", str(getattr(m, "path", type(m).__name__)))]
        if c is not None:
            shape = f"{getattr(c, 'n_layer', '?')} x {getattr(c, 'n_embd', '?')}"
            rows += [("version", f"v{getattr(c, 'version', '?')}"), ("layers x width", shape),
                     ("vocabulary", f"{h.tokenizer.name} ({getattr(c, 'vocab_size', '?')})")]
        device = getattr(m, "device", None)
        rows += [("dtype", str(getattr(m, "dtype_name", "?"))),
                 ("device", str(getattr(device, "type", device or "?"))),
                 ("threads", str(torch.get_num_threads()))]
        engine = getattr(m, "engine_path", None)
        if engine:
            rows.append(("engine", str(engine)))
        rows += [("prompt", f"{p.name} ({p.style} style: {p.user} / {p.bot})"),
                 # one line, written as it can be typed (a literal \n is a newline in the chat)
                 ("system", p.system.replace("\n", "\\n") or "(none)")]
        if h.mounted_name:
            rows.append(("state", h.mounted_name))
        think = h.options.think
        rows.append(("think", think if h.think_mode() == think else f"{think} (the {p.style} "
                     "prompt does not think: +prompt g1)"))
        rows += [(k, setting_value(h.settings, h.options, k)) for k in (
            "history", "temperature", "top_p", "top_k", "presence", "frequency", "decay",
            "max_tokens", "chat_max_tokens")]
        return tuple(rows)

