"""Safe arithmetic formulas over PV names, compiled once into numpy closures.

The model_manager configs hold formulas such as ``(CAMR:IN20:186:XRMS**2 + CAMR:IN20:186:YRMS**2)**(1/2)``.
poly-lithic hands them to ``sympy.sympify``, which calls ``eval`` on user text. Here a small tokenizer
and a precedence-climbing (Pratt) parser accept only:

* numbers: ``2``, ``2.5``, ``.5``, ``1e-3`` (always float64, so ``1/2 == 0.5``);
* symbols: ``[A-Za-z_][A-Za-z0-9_:]*`` plus ``.`` when a letter or digit follows (``PV:NAME.VAL``).
  Names starting with ``__`` and Python keywords are refused;
* ``+ - * / **`` (``**`` binds tighter than unary minus and is right-associative, as in Python and
  sympy: ``-x**2 == -(x**2)``, ``2**3**2 == 2**9``), unary ``+``/``-``, parentheses;
* the functions in ``FUNCTIONS`` and the constants ``pi`` and ``E``.

``^`` is refused with a hint to use ``**`` (sympy would read ``^`` as XOR). Evaluation uses numpy,
so arrays broadcast and NaN/inf propagate instead of raising.

Limits: PV names containing ``-``, ``+`` or other operator characters cannot be written in a
formula, and ``pi``/``E`` always mean the constants (as in sympy), never a PV of that name.
"""

from __future__ import annotations

import keyword
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from model_deploy.runtime.errors import FormulaError

MAX_FORMULA_LENGTH = 10_000
MAX_NESTING = 100

Evaluator = Callable[[Mapping[str, Any]], Any]


def _log(x: Any, base: Any = None) -> Any:
    return np.log(x) if base is None else np.log(x) / np.log(base)


def _variadic(ufunc: np.ufunc) -> Callable[..., Any]:
    def reduce(*args: Any) -> Any:
        result = args[0]
        for arg in args[1:]:
            result = ufunc(result, arg)
        return result

    return reduce


# name -> (numpy implementation, minimum arguments, maximum arguments or None for "any")
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "sqrt": (np.sqrt, 1, 1),
    "exp": (np.exp, 1, 1),
    "log": (_log, 1, 2),  # log(x) is natural; log(x, base) as in sympy
    "ln": (np.log, 1, 1),
    "log10": (np.log10, 1, 1),
    "sin": (np.sin, 1, 1),
    "cos": (np.cos, 1, 1),
    "tan": (np.tan, 1, 1),
    "asin": (np.arcsin, 1, 1),
    "acos": (np.arccos, 1, 1),
    "atan": (np.arctan, 1, 1),
    "atan2": (np.arctan2, 2, 2),  # atan2(y, x), same order as sympy and numpy
    "sinh": (np.sinh, 1, 1),
    "cosh": (np.cosh, 1, 1),
    "tanh": (np.tanh, 1, 1),
    "abs": (np.abs, 1, 1),
    "Abs": (np.abs, 1, 1),
    "min": (_variadic(np.minimum), 2, None),
    "Min": (_variadic(np.minimum), 2, None),
    "max": (_variadic(np.maximum), 2, None),
    "Max": (_variadic(np.maximum), 2, None),
    "floor": (np.floor, 1, 1),
    "ceil": (np.ceil, 1, 1),
    "ceiling": (np.ceil, 1, 1),
}
CONSTANTS: dict[str, float] = {"pi": math.pi, "E": math.e}

_EXPECTED_OPERAND = "expected a number, symbol, function call or '('"
_EXPECTED_OPERATOR = "expected an operator (+ - * / **) or the end of the formula"

# ---------------------------------------------------------------------------------------- tokens

_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_NAME = re.compile(r"[A-Za-z_](?:[A-Za-z0-9_:]|\.(?=[A-Za-z0-9]))*")
_OPERATORS = ("**", "+", "-", "*", "/", "(", ")", ",")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Token:
    kind: str  # "number", "name", "op", "end" or "bad"
    text: str
    column: int  # 1-based, for messages
    problem: str = ""  # why a "bad" token is refused


def _bad_character(text: str, index: int) -> Token:
    char = text[index]
    column = index + 1
    if text.startswith("//", index):
        return Token("bad", "//", column, "floor division '//' {where} is not supported; use floor(a / b)")
    if char == "^":
        return Token("bad", char, column, "'^' {where} is not supported; use '**' for powers")
    if char in "'\"":
        return Token("bad", char, column, "quote {where}: strings are not allowed in formulas")
    if char == ".":
        return Token(
            "bad", char, column, "unexpected '.' {where}; '.' may only appear in a number or inside a PV name"
        )
    return Token(
        "bad",
        char,
        column,
        f"unexpected character {char!r} {{where}}; formulas may contain numbers, PV names, + - * / ** ( ) , "
        "and the functions " + ", ".join(sorted(FUNCTIONS)),
    )


def _name_token(name: str, column: int) -> Token:
    if name.startswith("__"):
        return Token("bad", name, column, f"name {name!r} {{where}}: names starting with '__' are not allowed")
    bare = name.rstrip(":")
    if keyword.iskeyword(bare):
        return Token("bad", name, column, f"{bare!r} {{where}} is a Python keyword; formulas are arithmetic only")
    return Token("name", name, column)


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens. Bad input becomes a ``bad`` token the parser reports in order."""
    tokens: list[Token] = []
    index = 0
    while index < len(text):
        space = _SPACE.match(text, index)
        if space:
            index = space.end()
            continue
        number = _NUMBER.match(text, index)
        if number:
            tokens.append(Token("number", number.group(), index + 1))
            index = number.end()
            continue
        name = _NAME.match(text, index)
        if name:
            tokens.append(_name_token(name.group(), index + 1))
            index = name.end()
            continue
        op = next((op for op in _OPERATORS if text.startswith(op, index) and not text.startswith("//", index)), None)
        if op is None:
            tokens.append(_bad_character(text, index))
            break  # nothing after an unknown character can be trusted
        tokens.append(Token("op", op, index + 1))
        index += len(op)
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


# ------------------------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class Symbol:
    name: str


@dataclass(frozen=True)
class Unary:
    op: str
    operand: "Node"


@dataclass(frozen=True)
class Binary:
    op: str
    left: "Node"
    right: "Node"


@dataclass(frozen=True)
class Call:
    function: str
    args: tuple["Node", ...]


Node = Union[Number, Symbol, Unary, Binary, Call]

# Binding powers: higher binds tighter. Unary minus sits between * and ** so -x**2 == -(x**2).
_BINARY_POWER = {"+": 10, "-": 10, "*": 20, "/": 20, "**": 40}
_UNARY_POWER = 30
_RIGHT_ASSOCIATIVE = {"**"}


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0
        self.depth = 0

    # -- helpers
    def peek(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        if token.kind == "bad":
            self.fail(token, token.problem)
        self.index += 1
        return token

    def fail(self, token: Token, message: str) -> None:
        where = f"at column {token.column}"
        if token.kind == "bad":
            text = message.replace("{where}", where)
        elif token.kind == "end":
            text = f"unexpected end of formula; {message}"
        else:
            text = f"unexpected {_describe(token)} {where}; {message}"
        raise FormulaError(f'formula "{self.text}": {text}', formula=self.text, column=token.column)

    # -- grammar
    def parse(self) -> Node:
        if not self.text.strip():
            raise FormulaError(
                f'formula "{self.text}": empty; expected an expression such as "PV:A * 2"', formula=self.text
            )
        node = self.expression(0)
        token = self.peek()
        if token.kind != "end":
            if token.kind == "bad":
                self.advance()
            hint = _EXPECTED_OPERATOR
            if token.kind in ("name", "number") or token.text == "(":
                hint += f"; implicit multiplication is not supported, write '*' before {token.text!r}"
            self.fail(token, hint)
        return node

    def expression(self, min_power: int) -> Node:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise FormulaError(
                f'formula "{self.text[:80]}...": nested more than {MAX_NESTING} levels deep; simplify it',
                formula=self.text,
            )
        left = self.prefix()
        while True:
            token = self.peek()
            if token.kind == "bad":
                self.advance()
            power = _BINARY_POWER.get(token.text) if token.kind == "op" else None
            if power is None or power <= min_power:
                break
            self.advance()
            right_power = power - 1 if token.text in _RIGHT_ASSOCIATIVE else power
            left = Binary(token.text, left, self.expression(right_power))
        self.depth -= 1
        return left

    def prefix(self) -> Node:
        token = self.advance()
        if token.kind == "number":
            return Number(float(token.text))
        if token.kind == "name":
            if self.peek().text == "(" and self.peek().kind == "op":
                return self.call(token)
            if token.text in CONSTANTS:
                return Number(CONSTANTS[token.text])
            return Symbol(token.text)
        if token.kind == "op" and token.text in ("-", "+"):
            return Unary(token.text, self.expression(_UNARY_POWER))
        if token.kind == "op" and token.text == "(":
            node = self.expression(0)
            self.expect_close(token)
            return node
        self.fail(token, _EXPECTED_OPERAND)
        raise AssertionError("unreachable")

    def call(self, name: Token) -> Node:
        if name.text not in FUNCTIONS:
            raise FormulaError(
                f'formula "{self.text}": unknown function {name.text!r} at column {name.column}; '
                f"allowed functions: {', '.join(sorted(FUNCTIONS))}",
                formula=self.text,
                column=name.column,
            )
        opening = self.advance()
        args: list[Node] = []
        if not (self.peek().kind == "op" and self.peek().text == ")"):
            args.append(self.expression(0))
            while self.peek().kind == "op" and self.peek().text == ",":
                self.advance()
                args.append(self.expression(0))
        self.expect_close(opening)
        _, least, most = FUNCTIONS[name.text]
        if len(args) < least or (most is not None and len(args) > most):
            wanted = str(least) if least == most else (f"{least} to {most}" if most else f"at least {least}")
            raise FormulaError(
                f'formula "{self.text}": {name.text}() at column {name.column} takes {wanted} '
                f"argument{'s' if wanted != '1' else ''}, got {len(args)}",
                formula=self.text,
                column=name.column,
            )
        return Call(name.text, tuple(args))

    def expect_close(self, opening: Token) -> None:
        token = self.peek()
        if token.kind == "op" and token.text == ")":
            self.advance()
            return
        if token.kind == "bad":
            self.advance()
        self.fail(token, f"expected ')' to close the '(' at column {opening.column}")


def _describe(token: Token) -> str:
    if token.kind == "end":
        return "end of formula"
    if token.kind == "name":
        return f"symbol {token.text!r}"
    if token.kind == "number":
        return f"number {token.text}"
    return repr(token.text)


def parse_formula(text: str) -> Node:
    """Parse ``text`` into an AST; raises FormulaError naming the column and what was expected."""
    if not isinstance(text, str):
        raise FormulaError(f"formula {text!r}: expected a string, got {type(text).__name__}")
    if len(text) > MAX_FORMULA_LENGTH:
        raise FormulaError(f'formula "{text[:40]}...": longer than {MAX_FORMULA_LENGTH} characters')
    return _Parser(text).parse()


# --------------------------------------------------------------------------------------- compile


@dataclass(frozen=True)
class _Constant:
    value: Any


Compiled = Union[_Constant, Evaluator]

# + - * work the same for python floats, numpy scalars and arrays, and operator.* is much faster
# than a ufunc call on scalars. / and ** use ufuncs when no operand is a numpy constant, so python
# float inputs still get numpy semantics (inf instead of ZeroDivisionError, nan instead of complex).
_ARITHMETIC: dict[str, Callable[[Any, Any], Any]] = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_NUMPY_BINARY: dict[str, Callable[[Any, Any], Any]] = {"/": np.true_divide, "**": np.power}
_SCALAR_BINARY: dict[str, Callable[[Any, Any], Any]] = {**_ARITHMETIC, "/": operator.truediv, "**": operator.pow}


def _fold(function: Callable[..., Any], *args: Any) -> _Constant:
    with np.errstate(all="ignore"):
        return _Constant(np.float64(function(*args)))


def _compile(node: Node) -> Compiled:
    if isinstance(node, Number):
        return _Constant(np.float64(node.value))
    if isinstance(node, Symbol):
        return operator.itemgetter(node.name)
    if isinstance(node, Unary):
        operand = _compile(node.operand)
        if node.op == "+":
            return operand
        if isinstance(operand, _Constant):
            return _fold(operator.neg, operand.value)
        return lambda values: -operand(values)
    if isinstance(node, Binary):
        return _compile_binary(node.op, _compile(node.left), _compile(node.right))
    if isinstance(node, Call):
        return _compile_call(node)
    raise TypeError(f"unknown formula node {node!r}")


def _compile_binary(op: str, left: Compiled, right: Compiled) -> Compiled:
    scalar_op = _SCALAR_BINARY[op]
    if isinstance(left, _Constant) and isinstance(right, _Constant):
        return _fold(scalar_op, left.value, right.value)
    if isinstance(right, _Constant):
        constant = right.value
        if op == "**" and constant == 2.0:
            return lambda values: np.square(left(values))  # type: ignore[operator]
        if op == "**" and constant == 0.5:
            return lambda values: np.sqrt(left(values))  # type: ignore[operator]
        return lambda values: scalar_op(left(values), constant)  # type: ignore[operator]
    if isinstance(left, _Constant):
        constant = left.value
        return lambda values: scalar_op(constant, right(values))  # type: ignore[operator]
    both_op = _NUMPY_BINARY.get(op, scalar_op)
    return lambda values: both_op(left(values), right(values))  # type: ignore[operator]


def _compile_call(node: Call) -> Compiled:
    function = FUNCTIONS[node.function][0]
    args = [_compile(arg) for arg in node.args]
    if all(isinstance(arg, _Constant) for arg in args):
        return _fold(function, *(arg.value for arg in args))  # type: ignore[union-attr]
    evaluators = [arg if not isinstance(arg, _Constant) else _constant_evaluator(arg.value) for arg in args]
    if len(evaluators) == 1:
        only = evaluators[0]
        return lambda values: function(only(values))
    if len(evaluators) == 2:
        first, second = evaluators
        return lambda values: function(first(values), second(values))
    return lambda values: function(*(evaluate(values) for evaluate in evaluators))


def _constant_evaluator(value: Any) -> Evaluator:
    return lambda values: value


def _symbols_in(node: Node) -> list[str]:
    found: dict[str, None] = {}

    def walk(item: Node) -> None:
        if isinstance(item, Symbol):
            found.setdefault(item.name, None)
        elif isinstance(item, Unary):
            walk(item.operand)
        elif isinstance(item, Binary):
            walk(item.left)
            walk(item.right)
        elif isinstance(item, Call):
            for arg in item.args:
                walk(arg)

    walk(node)
    return list(found)


class CompiledFormula:
    """A parsed formula: ``formula(values)`` evaluates it over a mapping of symbol -> value.

    ``symbols`` lists the symbols in order of first appearance. A bare symbol returns the value
    unchanged (same object) and a constant formula ignores ``values``. Missing symbols raise KeyError.
    """

    __slots__ = ("text", "symbols", "constant", "_evaluate")

    def __init__(self, text: str, symbols: tuple[str, ...], evaluate: Evaluator, constant: float | None):
        self.text = text
        self.symbols = symbols
        self.constant = constant  # the value when the formula has no symbols, else None
        self._evaluate = evaluate

    @property
    def is_constant(self) -> bool:
        return self.constant is not None

    def __call__(self, values: Mapping[str, Any]) -> Any:
        return self._evaluate(values)

    def __repr__(self) -> str:
        return f"CompiledFormula({self.text!r}, symbols={self.symbols!r})"


def compile_formula(text: str) -> CompiledFormula:
    """Parse and compile ``text`` once; raises FormulaError for anything outside the grammar."""
    node = parse_formula(text)
    compiled = _compile(node)
    symbols = tuple(_symbols_in(node))
    if isinstance(compiled, _Constant):
        value = float(compiled.value)
        return CompiledFormula(text, symbols, _constant_evaluator(value), value)
    return CompiledFormula(text, symbols, compiled, None)
