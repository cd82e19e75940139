"""Formula evaluation cost: our compiled formulas vs sympy (the baseline poly-lithic builds on).

Prints the median time per evaluation for each seed formula, ours and sympy's `lambdify` (numpy), and the
ratio. Run: .venv/bin/python bench/formula_bench.py
"""

from __future__ import annotations

import statistics
import timeit

import numpy as np
import sympy

from model_deploy.runtime.formula import compile_formula

FORMULAS = {
    "bare symbol": "CAMR:IN20:186:XRMS",
    "constant": "1.8550514181818183",
    "sigma_xy (seed ex. 2)": "(CAMR:IN20:186:XRMS**2 + CAMR:IN20:186:YRMS**2)**(1/2)",
    "combined (seed ex. 2)": "(sigma_x**2 + sigma_y**2)**(1/2)",
}


def sympy_callable(text: str):
    # sympy cannot parse ':' in names: substitute safe names, as poly-lithic does.
    compiled = compile_formula(text)
    safe = {name: f"s{i}" for i, name in enumerate(compiled.symbols)}
    expr_text = text
    for name in sorted(safe, key=len, reverse=True):
        expr_text = expr_text.replace(name, safe[name])
    symbols = [sympy.Symbol(safe[name]) for name in compiled.symbols]
    fn = sympy.lambdify(symbols, sympy.sympify(expr_text), "numpy")
    names = compiled.symbols
    return lambda values: fn(*(values[n] for n in names))


def per_call(fn, values, number=20_000, repeat=7) -> float:
    return statistics.median(timeit.repeat(lambda: fn(values), number=number, repeat=repeat)) / number


def main() -> None:
    print(f"{'formula':28} {'ours (us)':>10} {'sympy (us)':>11} {'speed-up':>9}")
    for label, text in FORMULAS.items():
        ours = compile_formula(text)
        values = {name: np.float64(1.5 + i) for i, name in enumerate(ours.symbols)}
        baseline = sympy_callable(text)
        assert np.isclose(float(ours(values)), float(baseline(values)))
        t_ours, t_base = per_call(ours, values), per_call(baseline, values)
        print(f"{label:28} {t_ours * 1e6:10.2f} {t_base * 1e6:11.2f} {t_base / t_ours:8.1f}x")


if __name__ == "__main__":
    main()
