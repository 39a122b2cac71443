"""Text in and out of the engine: the model folder's tokenizer, its chat template, and stop strings.

Reads tokenizer.json with the `tokenizers` library and renders the chat template (chat_template.jinja
or tokenizer_config.json) with jinja2 the way transformers does, so nothing is fetched and transformers
is not imported.
"""

from __future__ import annotations

import json
from pathlib import Path

from peers.errors import EngineConfigError, PromptError


class TextCodec:
    """Encode prompts, render chats and decode outputs for one model folder."""

    def __init__(self, tokenizer, chat_template: str | None, special_tokens: dict[str, str]):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.special_tokens = special_tokens

    @classmethod
    def load(cls, folder: Path) -> TextCodec:
        from tokenizers import Tokenizer

        path = folder / "tokenizer.json"
        if not path.is_file():
            raise EngineConfigError(f"{folder} has no tokenizer.json: text prompts need one (token ids still work)")
        config = {}
        if (folder / "tokenizer_config.json").is_file():
            config = json.loads((folder / "tokenizer_config.json").read_text())
        template = config.get("chat_template")
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        specials = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token") if config.get(k)}
        return cls(Tokenizer.from_file(str(path)), template, specials)

    def encode(self, text: str) -> list[int]:
        """Token ids of a plain prompt, with the tokenizer's own special tokens (e.g. Llama's BOS)."""
        return self.tokenizer.encode(text, add_special_tokens=True).ids

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of a chat rendered by the model's template, ready for the assistant's answer."""
        if not self.chat_template:
            raise PromptError("this model has no chat template: send a plain prompt instead of a chat")
        if not messages or any(not isinstance(m, dict) or "role" not in m or "content" not in m for m in messages):
            raise PromptError("a chat is a non-empty list of {'role': ..., 'content': ...} messages")
        text = _render(self.chat_template, messages, self.special_tokens)
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def token_id(self, text: str) -> int | None:
        return self.tokenizer.token_to_id(text)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        eos = self.special_tokens.get("eos_token")
        token = self.token_id(eos) if eos else None
        return () if token is None else (token,)


def find_stop(text: str, stops: tuple[str, ...], search_from: int) -> int | None:
    """Index where the first stop string starts in `text` at or after `search_from`, else None."""
    hits = [i for i in (text.find(s, max(0, search_from - len(s) + 1)) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _token_text(token) -> str:
    return token["content"] if isinstance(token, dict) else str(token)


def _render(template: str, messages: list[dict], special_tokens: dict[str, str]) -> str:
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=True, **special_tokens)
    except TemplateError as e:
        raise PromptError(f"the chat template rejected these messages: {e}") from e
