"""Error types shared by the runtime.

``ConfigError`` is raised for anything wrong in user input (pipeline YAML, formulas, transformer
configs). It carries one line per problem, each ``field.path: what is wrong; expected/fix``, so the
CLI and the operator can show every problem at once instead of a traceback.

``PipelineError`` is raised while the pipeline runs; ``stage`` says which step failed.
"""

from __future__ import annotations

from collections.abc import Iterable

PIPELINE_STAGES: tuple[str, ...] = ("get", "transform_in", "model", "transform_out", "put")


class ConfigError(ValueError):
    """Invalid configuration. ``problems`` holds one ``field.path: problem; fix`` line each."""

    def __init__(self, problems: str | Iterable[str]):
        if isinstance(problems, str):
            problems = [problems]
        self.problems: list[str] = [str(problem) for problem in problems] or ["invalid configuration"]
        super().__init__(*self.problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)

    def with_prefix(self, prefix: str) -> "ConfigError":
        """A copy whose problems are re-rooted under ``prefix`` (e.g. a YAML section path)."""
        if not prefix:
            return self
        return type(self)([f"{prefix}.{problem}" for problem in self.problems])


class FormulaError(ConfigError):
    """A formula that cannot be parsed or uses something outside the allowed arithmetic."""

    def __init__(self, message: str, *, formula: str = "", column: int | None = None):
        super().__init__([message])
        self.formula = formula
        self.column = column

    def with_prefix(self, prefix: str) -> "ConfigError":
        return ConfigError([f"{prefix}: {problem}" for problem in self.problems]) if prefix else self


class PipelineError(RuntimeError):
    """A run-time failure in one pipeline stage (one of ``PIPELINE_STAGES``)."""

    def __init__(self, message: str, stage: str):
        if stage not in PIPELINE_STAGES:
            raise ValueError(f"unknown pipeline stage {stage!r}; expected one of {', '.join(PIPELINE_STAGES)}")
        super().__init__(message)
        self.stage = stage
