"""Pure value conversion / config parsing used by the p4p, p4p_server and k2eg interfaces."""

from __future__ import annotations

import numpy as np
import pytest

from model_deploy.runtime.errors import ConfigError
from model_deploy.runtime.interfaces.values import (
    VariableSpec,
    coerce_value,
    from_k2eg,
    initial_value,
    parse_interface_config,
)


def spec(kind="scalar", **extra) -> VariableSpec:
    return VariableSpec(key="K", name="PV:K", type=kind, **extra)


@pytest.mark.parametrize("value", [1, 2.5, np.float32(3), np.array(4.0), np.array([5.0]), True])
def test_scalars_become_float(value):
    result = coerce_value(value, spec())
    assert type(result) is float and result == float(np.asarray(value).reshape(()))


@pytest.mark.parametrize("value", ["1.0", [1.0, 2.0], None, np.zeros((2, 2)), 1j])
def test_non_scalars_are_refused_for_scalar_pvs(value):
    with pytest.raises(ValueError, match="PV 'PV:K' \\(variable 'K', type scalar\\): expected one number"):
        coerce_value(value, spec())


def test_arrays_are_1d_float64():
    result = coerce_value([1, 2, 3], spec("waveform"))
    assert result.dtype == np.float64 and result.shape == (3,)
    assert coerce_value(7, spec("array")).shape == (1,)
    with pytest.raises(ValueError, match=r"expected a 1-D array, got shape \(2, 2\)"):
        coerce_value(np.zeros((2, 2)), spec("array"))
    with pytest.raises(ValueError, match="expected real numbers"):
        coerce_value(["a", "b"], spec("array"))


def test_images_keep_supported_dtypes_and_shape():
    u16 = np.arange(6, dtype=np.uint16).reshape(2, 3)
    result = coerce_value(u16, spec("image"))
    assert result.dtype == np.uint16 and result.shape == (2, 3)
    assert coerce_value(np.zeros((2, 3), dtype=np.float16), spec("image")).dtype == np.float64
    with pytest.raises(ValueError, match=r"expected a 2-D image \(rows, columns\), got shape \(6,\)"):
        coerce_value(np.zeros(6), spec("image"))


def test_initial_values_for_hosted_pvs():
    assert initial_value(spec()) == 0.0
    assert initial_value(spec(default=2)) == 2.0
    assert initial_value(spec("array")).shape == (10,)
    assert initial_value(spec("array", length=3)).shape == (3,)
    image = initial_value(spec("image", image_size={"x": 4, "y": 2}))
    assert image.shape == (2, 4) and not image.any()
    filled = initial_value(spec("image", image_size={"x": 4, "y": 2}, default=1.5))
    assert filled.shape == (2, 4) and (filled == 1.5).all()


def test_from_k2eg_handles_missing_metadata_and_flat_images():
    assert from_k2eg({"value": 3}, spec()) == {"value": 3.0}
    assert from_k2eg(4.0, spec()) == {"value": 4.0}
    flat = from_k2eg({"value": list(range(6))}, spec("image", image_size={"x": 3, "y": 2}))
    np.testing.assert_array_equal(flat["value"], [[0, 1, 2], [3, 4, 5]])
    # A size that does not match image_size stays 1-D rather than being reshaped wrongly.
    assert from_k2eg({"value": list(range(5))}, spec("image", image_size={"x": 3, "y": 2}))["value"].shape == (5,)


def test_parse_fills_defaults_and_keeps_order():
    settings = parse_interface_config(
        {"variables": {"B": None, "A": {"name": "PV:A", "type": "image", "formula": "ignored"}}, "timeout": 1.5},
        method="p4p",
    )
    assert list(settings.variables) == ["B", "A"]
    b, a = settings.variables["B"], settings.variables["A"]
    assert (b.name, b.proto, b.type, b.uri) == ("B", "pva", "scalar", "pva://B")
    assert (a.name, a.type) == ("PV:A", "image")
    assert settings.timeout == 1.5


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("not a mapping", "config: expected a mapping"),
        ({"variables": ["A", "B"]}, "variables: expected a mapping, got list"),
        ({"variables": {"A": 5}}, "variables.A: expected a mapping"),
        ({"variables": {"A": {"name": 5}}}, "variables.A.name: Input should be a valid string"),
        ({"variables": {"A": {}}, "timeout": True}, "timeout: expected a positive number"),
    ],
)
def test_parse_errors_name_the_field(config, expected):
    with pytest.raises(ConfigError) as info:
        parse_interface_config(config, method="p4p")
    assert expected in str(info.value)
