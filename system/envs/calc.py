"""The built-in calculator environment (`rollout.env: calc`) and its prompts (`data.prompts: builtin:calc`).

An episode has two turns. Turn 1 is the tool call: the calculator evaluates the expression of the policy's
`<calc>…</calc>` (or, leniently, the longest run of arithmetic in its text) with a small parser — numbers,
+ − × ÷, parentheses, unary minus; never `eval` — and appends `<result>VALUE</result>` (or `error`, `none`) as
the observation. Turn 2 is the answer, scored against the question's value. Rewards, shaped so that a tiny
random model has a gradient from the first step:

    turn 1: tool_weight × (1 if a <calc> call evaluated, else the share of the text's characters that are
            arithmetic: digits and + - * / ( ) .)
    turn 2: answer_weight × (1 if the answer's first number is the question's value, else half the share of
            its characters that are digits)
"""

from __future__ import annotations

import math
import random
import re

ARITHMETIC = set("0123456789+-*/().")
CALL = re.compile(r"<calc>(.*?)</calc>", re.S)
RUN = re.compile(r"[\d\s+\-*/().]+")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
MAX_CHARS = 64
"""Longer expressions are refused (the parser is recursive)."""
MAX_MAGNITUDE = 1e12


class CalcError(ValueError):
    pass


def evaluate(expression: str) -> float:
    """The value of an arithmetic expression: numbers, + - * /, parentheses, unary minus. Raises CalcError."""
    text = expression.replace(" ", "").replace("\n", "").replace("\t", "")
    if not text or len(text) > MAX_CHARS:
        raise CalcError("empty" if not text else "too long")
    pos = 0

    def peek() -> str:
        return text[pos] if pos < len(text) else ""

    def number() -> float:
        nonlocal pos
        match = re.compile(r"\d+(?:\.\d+)?").match(text, pos)
        if not match:
            raise CalcError(f"expected a number at {pos}")
        pos = match.end()
        return float(match.group())

    def factor() -> float:
        nonlocal pos
        if peek() == "-":
            pos += 1
            return -factor()
        if peek() == "(":
            pos += 1
            value = expr()
            if peek() != ")":
                raise CalcError("unbalanced parenthesis")
            pos += 1
            return value
        return number()

    def term() -> float:
        nonlocal pos
        value = factor()
        while peek() and peek() in "*/":
            op = text[pos]
            pos += 1
            right = factor()
            if op == "/" and right == 0:
                raise CalcError("division by zero")
            value = value * right if op == "*" else value / right
        return value

    def expr() -> float:
        nonlocal pos
        value = term()
        while peek() and peek() in "+-":
            op = text[pos]
            pos += 1
            value = value + term() if op == "+" else value - term()
        return value

    value = expr()
    if pos != len(text):
        raise CalcError(f"unexpected {text[pos]!r} at {pos}")
    if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise CalcError("out of range")
    return value


def show(value: float) -> str:
    """12.0 → '12'; 1/3 → '0.333333'."""
    return str(int(value)) if value == int(value) else f"{value:.6g}"


def find_expression(text: str) -> str | None:
    """The longest run of arithmetic characters that holds a digit, stripped; None if there is none."""
    runs = [r.strip() for r in RUN.findall(text) if any(ch.isdigit() for ch in r)]
    return max(runs, key=len) if runs else None


def share(text: str, chars: set[str]) -> float:
    return sum(ch in chars for ch in text) / len(text) if text else 0.0


class CalculatorEnv:
    """Two turns: a calculator call, then the answer (see the module docstring)."""

    def __init__(self, tool_weight: float = 0.5, answer_weight: float = 1.0):
        self.tool_weight, self.answer_weight = tool_weight, answer_weight
        self.target: float | None = None
        self.turn = 0

    def reset(self, row: dict) -> str:
        question = find_expression(row["prompt"].split("?")[0])
        try:
            self.target = evaluate(question) if question else None
        except CalcError:
            self.target = None
        self.turn = 0
        return row["prompt"]

    def step(self, text: str) -> tuple[str | None, float, bool]:
        self.turn += 1
        if self.turn == 1:
            call = CALL.search(text)
            expression = call.group(1) if call else find_expression(text)
            try:
                result = show(evaluate(expression)) if expression else "none"
            except CalcError:
                result = "error"
            used = call is not None and result not in ("none", "error")
            reward = self.tool_weight * (1.0 if used else share(text, ARITHMETIC))
            return f"<result>{result}</result>", reward, False
        answer = NUMBER.search(text)
        correct = (answer is not None and self.target is not None
                   and abs(float(answer.group()) - self.target) < 1e-6)
        return None, self.answer_weight * (1.0 if correct else 0.5 * share(text, set("0123456789"))), True


def calc_prompts(count: int = 100, seed: int = 0) -> list[str]:
    """`builtin:calc`: "What is 17 + 25? Use <calc>...</calc>." with two-digit operands and + - *."""
    rng = random.Random(seed)
    return [f"What is {rng.randint(2, 99)} {rng.choice('+-*')} {rng.randint(2, 99)}? Use <calc>...</calc>."
            for _ in range(count)]
