"""Chat-format prompts (`messages`: a list of {role, content}) rendered to the text the policy continues.

`data.chat_template`:
- `auto`: the tokenizer's own chat template (what the model was tuned on), else the plain format below;
- `none`: the plain format — one `role: content` line per message, then `assistant:` — for models without a
  template;
- a path: a Jinja template file, rendered by the tokenizer as if it were its own.
Templates render with the generation prompt (the assistant's turn opened), since the policy writes the next
turn.
"""

from __future__ import annotations

from pathlib import Path

from alignray.errors import DataError


def check_messages(value: object) -> str | None:
    """What is wrong with a `messages` value, or None."""
    if not isinstance(value, list) or not value:
        return f"must be a non-empty list of {{role, content}} messages, got {type(value).__name__}"
    for j, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"),
                                                                                           str):
            return f"message {j}: expected {{role: string, content: string}}, got {str(m)[:80]}"
    if not any(m["content"].strip() for m in value):
        return "has only empty messages"
    return None


def plain_chat(messages: list[dict]) -> str:
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


class ChatRenderer:
    """Renders validated messages with the configured template; built once per prompt set."""

    def __init__(self, setting: str, tokenizer):
        self.tokenizer = tokenizer
        if setting == "none":
            self.template = None
        elif setting == "auto":
            self.template = getattr(tokenizer, "chat_template", None) or None
        else:
            path = Path(setting).expanduser()
            if not path.is_file():
                raise DataError(f"data.chat_template: {setting}: no such file "
                                "(give auto, none or a Jinja file)")
            try:
                self.template = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise DataError(f"data.chat_template: {setting}: not a UTF-8 text file") from None

    def __call__(self, messages: list[dict]) -> str:
        if self.template is None:
            return plain_chat(messages)
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                  add_generation_prompt=True)
