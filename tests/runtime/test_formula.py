"""The safe formula compiler: grammar, numeric agreement with sympy, refusals, speed."""

from __future__ import annotations

import builtins
import math
import random
import re

import numpy as np
import pytest
import sympy

from model_deploy.runtime.errors import ConfigError, FormulaError
from model_deploy.runtime.formula import FUNCTIONS, compile_formula

# Formulas from the seed's examples plus ones that pin down precedence and the function whitelist.
SEED_FORMULAS = [
    "LUME:MLFLOW:TEST_A",
    "LUME:MLFLOW:TEST_C + LUME:MLFLOW:TEST_B",
    "1.8550514181818183",
    "(CAMR:IN20:186:XRMS**2 + CAMR:IN20:186:YRMS**2)**(1/2)",
    "(sigma_x**2 + sigma_y**2)**(1/2)",
    "distgen:t_dist:length:value * 2",
    "ML:LOCAL:TEST_A * 2 + 10",
]
EXTRA_FORMULAS = [
    "-x**2",
    "2**3**2",
    "x**y**z",
    "1/2",
    "x/y/z",
    "x - y - z",
    "x/y*z",
    "2**-x",
    "-x**-y",
    "+x - -y",
    "x*-y",
    "((x + y))*z",
    "1e-3*x + 2.5e2 - .5*y",
    "sqrt(x)*exp(-y)",
    "log(x) + log(y, 2) + ln(z)",
    "log10(x*100)",
    "sin(x) + cos(y)*tan(z)",
    "asin(x/(1 + x)) + acos(y/(1 + y)) + atan(z)",
    "atan2(y, x)",
    "sinh(x) - cosh(y) + tanh(z)",
    "abs(x - y) + Abs(y - z)",
    "min(x, y) + max(x, y, z) + Min(y, z) + Max(z, x)",
    "floor(x*10) + ceil(y*10) + ceiling(z)",
    "pi*x**2 + E**y",
    "QUAD:IN20:121:BACT / (1 + SOLN:IN20:121:BACT**2)",
]
SYMPY_NAMES = {
    "min": sympy.Min,
    "max": sympy.Max,
    "ceil": sympy.ceiling,
    "abs": sympy.Abs,
    "log10": lambda value: sympy.log(value, 10),
    "E": sympy.E,
    "pi": sympy.pi,
}


def sympy_reference(text: str, symbols: tuple[str, ...]) -> tuple[sympy.Expr, list[sympy.Symbol]]:
    """sympy's reading of a TRUSTED formula; PV names are swapped for plain identifiers first."""
    placeholders = [sympy.Symbol(f"s{i}") for i in range(len(symbols))]
    rewritten = text
    for name, placeholder in sorted(zip(symbols, placeholders), key=lambda item: -len(item[0])):
        rewritten = re.sub(rf"(?<![A-Za-z0-9_:.]){re.escape(name)}(?![A-Za-z0-9_:.(])", str(placeholder), rewritten)
    namespace = {**SYMPY_NAMES, **{str(p): p for p in placeholders}}
    return sympy.sympify(rewritten, locals=namespace), placeholders


@pytest.mark.parametrize("text", SEED_FORMULAS + EXTRA_FORMULAS)
def test_matches_sympy_on_random_inputs(text):
    formula = compile_formula(text)
    expression, placeholders = sympy_reference(text, formula.symbols)
    rng = random.Random(text)
    for _ in range(15):
        values = {name: rng.uniform(0.2, 1.8) for name in formula.symbols}
        exact = {p: sympy.Float(values[n], 30) for p, n in zip(placeholders, formula.symbols)}
        expected = float(expression.subs(exact).evalf(30))
        got = formula({name: np.float64(value) for name, value in values.items()})
        assert math.isclose(got, expected, rel_tol=1e-10, abs_tol=1e-12), (text, values)


def test_symbols_are_pv_names_in_order_of_first_use():
    formula = compile_formula("(CAMR:IN20:186:YRMS + CAMR:IN20:186:XRMS) * CAMR:IN20:186:YRMS + distgen:t_dist:length:value")
    assert formula.symbols == ("CAMR:IN20:186:YRMS", "CAMR:IN20:186:XRMS", "distgen:t_dist:length:value")
    assert compile_formula("PV:A.VAL * 2").symbols == ("PV:A.VAL",)
    assert compile_formula("pi * E").symbols == ()


def test_precedence_and_true_division():
    assert compile_formula("-x**2")({"x": 3.0}) == -9.0
    assert compile_formula("2**3**2")({}) == 2.0**9
    assert compile_formula("1/2")({}) == 0.5
    assert compile_formula("2**-1")({}) == 0.5
    assert compile_formula("10 - 4 - 3")({}) == 3.0
    assert compile_formula("8 / 4 / 2")({}) == 1.0
    assert compile_formula("2 + 3 * 4")({}) == 14.0
    assert compile_formula("(2 + 3) * 4")({}) == 20.0


def test_half_exponent_gives_the_root():
    formula = compile_formula("(X**2 + Y**2)**(1/2)")
    assert formula({"X": 3.0, "Y": 4.0}) == 5.0
    assert formula({"X": np.float64(5.0), "Y": np.float64(12.0)}) == 13.0


def test_constants_fold_and_ignore_inputs():
    formula = compile_formula("1.8550514181818183")
    assert formula.is_constant and formula.constant == 1.8550514181818183
    assert formula({}) == 1.8550514181818183
    folded = compile_formula("(1/2) * 4 + sqrt(16)")
    assert folded.is_constant and folded.constant == 6.0


def test_bare_symbol_returns_the_value_itself():
    image = np.arange(6.0).reshape(2, 3)
    assert compile_formula("CAM:IMAGE")({"CAM:IMAGE": image}) is image


def test_arrays_broadcast_and_non_finite_values_propagate():
    formula = compile_formula("a * 2 + b")
    result = formula({"a": np.array([1.0, 2.0, np.nan]), "b": np.float64(1.0)})
    assert result[:2].tolist() == [3.0, 5.0] and np.isnan(result[2])
    with np.errstate(all="ignore"):
        assert compile_formula("a / b")({"a": 1.0, "b": 0.0}) == math.inf  # python floats: no ZeroDivisionError
        assert math.isnan(compile_formula("a ** b")({"a": -8.0, "b": 1 / 3}))  # no complex result
        assert math.isnan(compile_formula("sqrt(a)")({"a": -1.0}))
        assert compile_formula("a / 0")({"a": 1.0}) == math.inf


def test_missing_symbol_raises_key_error():
    with pytest.raises(KeyError):
        compile_formula("a + b")({"a": 1.0})


@pytest.mark.parametrize(
    "text, message",
    [
        ("A + * B", "formula \"A + * B\": unexpected '*' at column 5; expected a number, symbol, function call or '('"),
        ("2^3", "'^' at column 2 is not supported; use '**' for powers"),
        ("A +", "unexpected end of formula; expected a number, symbol, function call or '('"),
        ("(A + B", "expected ')' to close the '(' at column 1"),
        ("A + B)", "unexpected ')' at column 6; expected an operator"),
        ("2x", "unexpected symbol 'x' at column 2; expected an operator (+ - * / **) or the end of the formula; "
               "implicit multiplication is not supported"),
        ("", "empty; expected an expression"),
        ("   ", "empty; expected an expression"),
        ("sqrt(1, 2)", "sqrt() at column 1 takes 1 argument, got 2"),
        ("atan2(1)", "atan2() at column 1 takes 2 arguments, got 1"),
        ("max(x)", "max() at column 1 takes at least 2 arguments, got 1"),
        ("foo(x)", "unknown function 'foo' at column 1; allowed functions: "),
        ("a // b", "floor division '//' at column 3 is not supported"),
        ("a % b", "unexpected character '%' at column 3"),
        ("a == b", "unexpected character '=' at column 3"),
        ("x, y", "unexpected ',' at column 2"),
    ],
)
def test_syntax_errors_name_the_column_and_the_expectation(text, message):
    with pytest.raises(FormulaError) as caught:
        compile_formula(text)
    assert message in str(caught.value)
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, ValueError)
    assert "Traceback" not in str(caught.value)


def test_unknown_function_message_lists_every_allowed_function():
    with pytest.raises(FormulaError) as caught:
        compile_formula("erf(x)")
    for name in FUNCTIONS:
        assert name in str(caught.value)


MALICIOUS = [
    "__import__('os').system('touch {marker}')",
    "__import__(\"os\").system(\"touch {marker}\")",
    "().__class__.__bases__",
    "().__class__.__bases__[0].__subclasses__()",
    "lambda: 1",
    "(lambda: __import__('os').system('touch {marker}'))()",
    "A.__dict__",
    "A.__class__",
    "'touch {marker}'",
    "\"abc\"",
    "open('{marker}', 'w')",
    "exec('open(\"{marker}\", \"w\")')",
    "eval('1')",
    "getattr(A, 'x')",
    "[x for x in ()]",
    "import os",
    "x if y else z",
    "x; y",
    "x = 1",
    "{{}}",
    "A[0]",
    "Symbol('x')",
]


@pytest.mark.parametrize("template", MALICIOUS)
def test_malicious_formulas_are_refused_without_side_effects(template, tmp_path):
    marker = tmp_path / "pwned"
    text = template.format(marker=marker)
    with pytest.raises(FormulaError) as caught:
        formula = compile_formula(text)
        formula({"A": 1.0, "x": 1.0, "y": 1.0, "z": 1.0})
    assert str(caught.value).startswith(f'formula "{text}": ')
    assert "column" in str(caught.value)
    assert not marker.exists()


def test_compiling_and_evaluating_never_calls_eval_exec_or_sympy(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec/sympify must not be used on formula text")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(builtins, "compile", forbidden)
    monkeypatch.setattr(sympy, "sympify", forbidden)
    formula = compile_formula("(CAMR:IN20:186:XRMS**2 + CAMR:IN20:186:YRMS**2)**(1/2) + log(x, 2) + max(x, 1)")
    assert formula({"CAMR:IN20:186:XRMS": 3.0, "CAMR:IN20:186:YRMS": 4.0, "x": 4.0}) == 5.0 + 2.0 + 4.0


def test_python_keywords_and_dunder_names_are_refused():
    with pytest.raises(FormulaError, match="'lambda' at column 1 is a Python keyword"):
        compile_formula("lambda: 1")
    with pytest.raises(FormulaError, match="names starting with '__' are not allowed"):
        compile_formula("__builtins__")


def test_pathological_inputs_give_formula_errors_not_crashes():
    with pytest.raises(FormulaError, match="nested more than"):
        compile_formula("(" * 500 + "x" + ")" * 500)
    with pytest.raises(FormulaError, match="longer than"):
        compile_formula("x + " * 5000 + "x")
    with pytest.raises(FormulaError, match="expected a string"):
        compile_formula(3.5)  # type: ignore[arg-type]
