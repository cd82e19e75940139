"""Transformers: the seed's worked examples, images, pass-through, compound, NaN handling."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from model_deploy.runtime.config import load_config, parse_transformer_spec
from model_deploy.runtime.errors import ConfigError
from model_deploy.runtime.transformers import (
    CAImageTransformer,
    CompoundTransformer,
    PassThroughTransformer,
    ReverseTransformer,
    SimpleTransformer,
    build_transformer,
    non_finite,
)

CONFIGS = Path(__file__).parent / "configs"

SEED_SIMPLE = {
    "variables": {
        "x1": {"formula": "LUME:MLFLOW:TEST_A"},
        "x2": {"formula": "LUME:MLFLOW:TEST_B"},
        "x3": {"formula": "LUME:MLFLOW:TEST_C + LUME:MLFLOW:TEST_B"},
    },
    "symbols": ["LUME:MLFLOW:TEST_A", "LUME:MLFLOW:TEST_B", "LUME:MLFLOW:TEST_C"],
}
SEED_REVERSE = {"variables": {"LUME:MLFLOW:TEST_Y": {"formula": "y"}}, "symbols": ["LUME:MLFLOW:TEST_Y"]}
SEED_COMPOUND = {
    "transformers": {
        "transformer_1": {
            "type": "SimpleTransformer",
            "config": {
                "symbols": ["LUME:MLFLOW:TEST_B", "LUME:MLFLOW:TEST_A"],
                "variables": {"x2": {"formula": "LUME:MLFLOW:TEST_B"}, "x1": {"formula": "LUME:MLFLOW:TEST_A"}},
            },
        },
        "transformer_2": {
            "type": "CAImageTransfomer",  # the seed's typo
            "config": {
                "variables": {
                    "img_1": {"img_ch": "MY_TEST_CA", "img_x_ch": "MY_TEST_CA_X", "img_y_ch": "MY_TEST_CA_Y"},
                    "img_2": {"img_ch": "MY_TEST_C2", "img_x_ch": "MY_TEST_CA_X2", "img_y_ch": "MY_TEST_CA_Y2"},
                }
            },
        },
    }
}


def row_major_camera(columns: int, rows: int) -> np.ndarray:
    """A flat areaDetector-style array (x fastest) where pixel (x, y) holds 100*y + x."""
    return np.array([100 * y + x for y in range(rows) for x in range(columns)], dtype=np.uint16)


# ------------------------------------------------------------------------------ SimpleTransformer


def test_seed_simple_example_updates_only_when_every_symbol_has_a_value():
    transformer = SimpleTransformer(SEED_SIMPLE)
    assert transformer.input_names == ["LUME:MLFLOW:TEST_A", "LUME:MLFLOW:TEST_B", "LUME:MLFLOW:TEST_C"]
    assert transformer.output_names == ["x1", "x2", "x3"]
    transformer.handle("LUME:MLFLOW:TEST_A", 1)
    assert not transformer.updated
    transformer.handle("LUME:MLFLOW:TEST_B", 2)
    assert not transformer.updated
    transformer.handle("LUME:MLFLOW:TEST_C", 3)
    assert transformer.updated
    assert transformer.latest_transformed == {"x1": 1, "x2": 2, "x3": 5}


def test_seed_reverse_example():
    reverse = ReverseTransformer(SEED_REVERSE)
    reverse.handle("y", 0.5)
    assert reverse.updated
    assert reverse.latest_transformed == {"LUME:MLFLOW:TEST_Y": 0.5}


def test_take_consumes_the_update():
    transformer = SimpleTransformer(SEED_REVERSE)
    assert transformer.take() is None
    transformer.handle("y", {"value": 2.0, "timestamp": 1.0})
    assert transformer.take() == {"LUME:MLFLOW:TEST_Y": 2.0}
    assert not transformer.updated and transformer.take() is None
    assert transformer.latest_transformed == {"LUME:MLFLOW:TEST_Y": 2.0}  # still readable
    transformer.handle("y", 3.0)
    transformer.reset_updated()
    assert transformer.take() is None


def test_outputs_are_plain_floats_for_scalar_inputs():
    transformer = SimpleTransformer({"variables": {"a": {"formula": "x * 2"}, "b": {"formula": "x"}}})
    transformer.handle("x", np.int32(4))
    outputs = transformer.take()
    assert outputs == {"a": 8.0, "b": 4.0}
    assert all(type(value) is float for value in outputs.values())


def test_handle_many_computes_once_for_a_burst():
    calls = []

    class Counting(SimpleTransformer):
        def _transform(self):
            calls.append(1)
            return super()._transform()

    transformer = Counting(SEED_SIMPLE)
    transformer.handle_many({"LUME:MLFLOW:TEST_A": 1.0, "LUME:MLFLOW:TEST_B": 2.0, "LUME:MLFLOW:TEST_C": 3.0})
    assert len(calls) == 1 and transformer.take() == {"x1": 1.0, "x2": 2.0, "x3": 5.0}
    transformer.handle_many({"LUME:MLFLOW:TEST_C": 10.0, "UNRELATED": 5.0})
    assert len(calls) == 2 and transformer.take()["x3"] == 12.0
    transformer.handle_many({"UNRELATED": 1.0})  # nothing this transformer needs: no recomputation
    assert len(calls) == 2 and not transformer.updated


def test_constants_are_always_available():
    transformer = SimpleTransformer({"variables": {"length": {"formula": "1.8550514181818183"}, "x": {"formula": "A * 2"}}})
    assert transformer.input_names == ["A"]
    transformer.handle("A", 2.0)
    assert transformer.take() == {"length": 1.8550514181818183, "x": 4.0}
    only_constants = SimpleTransformer({"variables": {"c": {"formula": "2 * pi"}}})
    assert only_constants.input_names == []
    only_constants.handle("anything", 1.0)
    assert only_constants.take() == {"c": 2 * math.pi}


def test_unused_declared_symbols_are_not_waited_for():
    transformer = SimpleTransformer({"symbols": ["A", "NEVER_SENT"], "variables": {"x": {"formula": "A"}}})
    assert transformer.declared_symbols == ["A", "NEVER_SENT"]
    transformer.handle("A", 1.0)
    assert transformer.take() == {"x": 1.0}


def test_none_means_no_value_again():
    transformer = SimpleTransformer({"variables": {"s": {"formula": "a + b"}}})
    transformer.handle_many({"a": 1.0, "b": 2.0})
    assert transformer.take() == {"s": 3.0}
    transformer.handle("a", {"value": None})
    assert not transformer.updated
    transformer.handle("b", 5.0)
    assert not transformer.updated  # a is missing again
    transformer.handle("a", 1.0)
    assert transformer.take() == {"s": 6.0}


def test_nan_and_inf_inputs_are_computed_and_reported():
    transformer = SimpleTransformer({"variables": {"s": {"formula": "a + 1"}, "q": {"formula": "1 / b"}, "ok": {"formula": "b"}}})
    transformer.handle_many({"a": float("nan"), "b": 0.0})
    outputs = transformer.take()
    assert math.isnan(outputs["s"]) and outputs["q"] == math.inf and outputs["ok"] == 0.0
    assert non_finite(outputs) == ["s", "q"]


def test_non_finite_helper_handles_arrays_and_ignores_non_numbers():
    values = {"a": 1.0, "b": np.array([1.0, np.inf]), "c": np.zeros((2, 2)), "d": "text", "e": None, "f": -math.inf}
    assert non_finite(values) == ["b", "f"]


def test_array_inputs_are_transformed_elementwise():
    transformer = SimpleTransformer({"variables": {"scaled": {"formula": "wave * 2 + offset"}}})
    transformer.handle_many({"wave": [1, 2, 3], "offset": 0.5})
    np.testing.assert_array_equal(transformer.take()["scaled"], [2.5, 4.5, 6.5])


def test_bad_values_raise_a_clear_error_and_keep_the_last_outputs():
    transformer = SimpleTransformer({"variables": {"s": {"formula": "a + b"}}})
    transformer.handle_many({"a": 1.0, "b": 2.0})
    transformer.take()
    with pytest.raises(ValueError, match=r"SimpleTransformer: a: expected a number or a numeric array, got str 'oops'"):
        transformer.handle("a", "oops")
    assert not transformer.updated and transformer.latest_transformed == {"s": 3.0}
    with pytest.raises(ValueError, match=r"b: update has no 'value' field \(keys: val\)"):
        transformer.handle("b", {"val": 3.0})
    with pytest.raises(ValueError, match="a: expected a numeric array"):
        transformer.handle("a", ["x", "y"])
    with pytest.raises(ValueError, match="a: complex values are not supported"):
        transformer.handle("a", 1 + 2j)


def test_invalid_simple_config_is_a_config_error_naming_the_field():
    with pytest.raises(ConfigError) as caught:
        SimpleTransformer({"symbols": ["A"], "variables": {"x": {"formula": "A + * 2"}, "y": {}}})
    assert caught.value.problems == [
        "variables.x.formula: formula \"A + * 2\": unexpected '*' at column 5; "
        "expected a number, symbol, function call or '('",
        'variables.y.formula: required but missing; add formula: "<expression over PV names>"',
    ]
    with pytest.raises(ConfigError, match="variables: required but missing"):
        SimpleTransformer({"varaibles": {"x": {"formula": "A"}}})


# ------------------------------------------------------------------------------ CAImageTransformer


def test_non_square_image_keeps_pixels_in_place():
    transformer = CAImageTransformer(
        {"variables": {"image": {"img_ch": "CAM:IMAGE", "img_x_ch": "CAM:N_OF_COL", "img_y_ch": "CAM:N_OF_ROW"}}}
    )
    assert transformer.input_names == ["CAM:IMAGE", "CAM:N_OF_COL", "CAM:N_OF_ROW"]
    assert transformer.output_names == ["image"]
    flat = row_major_camera(columns=5, rows=3)
    transformer.handle("CAM:IMAGE", {"value": flat})
    transformer.handle("CAM:N_OF_COL", {"value": 5})
    assert not transformer.updated  # waits for all three channels
    transformer.handle("CAM:N_OF_ROW", {"value": 3.0})
    image = transformer.take()["image"]
    assert image.shape == (3, 5)  # (rows, cols) == (y, x)
    for y in range(3):
        for x in range(5):
            assert image[y, x] == 100 * y + x
    # Why not reshape(x, y) as the README says: for non-square images it scrambles the pixels.
    wrong = flat.reshape(5, 3)
    assert not all(wrong[x, y] == 100 * y + x for y in range(3) for x in range(5))


def test_column_major_unfolding_gives_the_same_orientation():
    transformer = CAImageTransformer(
        {"variables": {"image": {"img_ch": "I", "img_x_ch": "X", "img_y_ch": "Y", "unfold": "column_major"}}}
    )
    expected = row_major_camera(5, 3).reshape(3, 5)
    transformer.handle_many({"I": expected.flatten(order="F"), "X": 5, "Y": 3})
    np.testing.assert_array_equal(transformer.take()["image"], expected)


def test_image_size_mismatch_is_a_clear_error_then_recovers():
    transformer = CAImageTransformer({"variables": {"img": {"img_ch": "I", "img_x_ch": "X", "img_y_ch": "Y"}}})
    with pytest.raises(ValueError) as caught:
        transformer.handle_many({"I": np.arange(14), "X": 5, "Y": 3})
    assert str(caught.value) == (
        "CAImageTransformer 'img': I has 14 elements but X x Y = 5 x 3 = 15; "
        "check that img_x_ch is the column count and img_y_ch the row count"
    )
    assert not transformer.updated and transformer.latest_transformed == {}
    transformer.handle("I", np.arange(15))
    assert transformer.take()["img"].shape == (3, 5)


@pytest.mark.parametrize("bad", [0, 2.5, -3, float("nan"), "abc", [1, 2]])
def test_bad_image_dimensions_are_reported(bad):
    transformer = CAImageTransformer({"variables": {"img": {"img_ch": "I", "img_x_ch": "X", "img_y_ch": "Y"}}})
    with pytest.raises(ValueError, match="CAImageTransformer 'img': X = .* is not a positive whole number of pixels"):
        transformer.handle_many({"I": np.arange(6), "X": bad, "Y": 3})


def test_typo_alias_builds_the_image_transformer():
    transformer = build_transformer(
        "CAImageTransfomer", {"variables": {"img": {"img_ch": "I", "img_x_ch": "X", "img_y_ch": "Y"}}}
    )
    assert isinstance(transformer, CAImageTransformer)
    assert isinstance(build_transformer({"type": "transformer.CAImageTransformer", "config": {
        "variables": {"img": {"img_ch": "I", "img_x_ch": "X", "img_y_ch": "Y"}}}}), CAImageTransformer)


# ------------------------------------------------------------------------------ PassThrough


def test_pass_through_keeps_images_unchanged():
    transformer = PassThroughTransformer({"variables": {"LUME:MLFLOW:TEST_IMAGE": "y_img", "LUME:MLFLOW:TEST_MAX": "y_max"}})
    assert transformer.input_names == ["y_img", "y_max"]
    assert transformer.output_names == ["LUME:MLFLOW:TEST_IMAGE", "LUME:MLFLOW:TEST_MAX"]
    image = np.random.default_rng(1).random((480, 640))
    transformer.handle("y_img", image)
    assert not transformer.updated
    transformer.handle("y_max", {"value": 7})
    outputs = transformer.take()
    assert outputs["LUME:MLFLOW:TEST_IMAGE"] is image and outputs["LUME:MLFLOW:TEST_MAX"] == 7


def test_pass_through_config_must_map_names_to_names():
    with pytest.raises(ConfigError, match=r"variables.OUT: expected a string, got \{'formula': 'y'\}"):
        PassThroughTransformer({"variables": {"OUT": {"formula": "y"}}})


# ------------------------------------------------------------------------------ Compound


def test_compound_of_simple_and_image_merges_latest_outputs():
    compound = build_transformer("CompoundTransformer", SEED_COMPOUND)
    assert isinstance(compound, CompoundTransformer)
    assert compound.output_names == ["x2", "x1", "img_1", "img_2"]
    assert set(compound.input_names) == {
        "LUME:MLFLOW:TEST_B", "LUME:MLFLOW:TEST_A", "MY_TEST_CA", "MY_TEST_CA_X", "MY_TEST_CA_Y",
        "MY_TEST_C2", "MY_TEST_CA_X2", "MY_TEST_CA_Y2",
    }
    compound.handle("LUME:MLFLOW:TEST_A", 1.2)
    assert not compound.updated
    compound.handle("LUME:MLFLOW:TEST_B", 3.2)
    assert compound.take() == {"x2": 3.2, "x1": 1.2}  # partial until the images arrive
    compound.handle_many({
        "MY_TEST_CA": row_major_camera(5, 3), "MY_TEST_CA_X": 5, "MY_TEST_CA_Y": 3,
        "MY_TEST_C2": np.arange(6), "MY_TEST_CA_X2": 2, "MY_TEST_CA_Y2": 3,
    })
    merged = compound.take()
    assert list(merged) == ["x2", "x1", "img_1", "img_2"]
    assert merged["x1"] == 1.2 and merged["img_1"].shape == (3, 5) and merged["img_2"].shape == (3, 2)
    assert merged["img_1"][2, 4] == 204


def test_compound_reports_part_errors_but_keeps_other_parts_output():
    compound = build_transformer("CompoundTransformer", SEED_COMPOUND)
    compound.handle_many({"LUME:MLFLOW:TEST_A": 1.0, "LUME:MLFLOW:TEST_B": 2.0})
    compound.take()
    with pytest.raises(ValueError, match="CompoundTransformer: transformer_2: CAImageTransformer 'img_1'"):
        compound.handle_many({
            "LUME:MLFLOW:TEST_A": 5.0,
            "MY_TEST_CA": np.arange(7), "MY_TEST_CA_X": 2, "MY_TEST_CA_Y": 3,
            "MY_TEST_C2": np.arange(6), "MY_TEST_CA_X2": 2, "MY_TEST_CA_Y2": 3,
        })
    assert compound.take() == {"x2": 2.0, "x1": 5.0}


def test_compound_rejects_two_parts_writing_the_same_output():
    config = {"transformers": {
        "a": {"type": "SimpleTransformer", "config": {"variables": {"OUT": {"formula": "x"}}}},
        "b": {"type": "PassThroughTransformer", "config": {"variables": {"OUT": "y"}}},
    }}
    with pytest.raises(ConfigError) as caught:
        build_transformer("CompoundTransformer", config)
    assert caught.value.problems == [
        "config.transformers.b.config.variables.OUT: output 'OUT' is also produced by 'a'; "
        "each output must come from one transformer"
    ]


def test_seed_example3_output_side_splits_scalars_and_image():
    config = load_config(CONFIGS / "seed_example3.yaml")
    output = build_transformer(config.output_transform)
    image = np.ones((480, 640))
    output.handle_many({"y_max": 4.0, "y_min": 0.0, "y_mean": 1.5, "y_std": 0.5, "y_img": image})
    result = output.take()
    assert result["LUME:MLFLOW:TEST_Y_MAX"] == 4.0 and result["LUME:MLFLOW:TEST_Y_STD"] == 0.5
    assert result["LUME:MLFLOW:TEST_IMAGE"] is image
    assert set(result) == set(config.output.variables)


# ------------------------------------------------------------------------------ registry


def test_build_transformer_accepts_spec_dict_or_type_name():
    spec = parse_transformer_spec({"type": "ReverseTransformer", "config": SEED_REVERSE})
    for built in (build_transformer(spec), build_transformer({"type": "ReverseTransformer", "config": SEED_REVERSE}),
                  build_transformer("ReverseTransformer", SEED_REVERSE)):
        assert type(built) is ReverseTransformer
        built.handle("y", 0.5)
        assert built.take() == {"LUME:MLFLOW:TEST_Y": 0.5}


def test_unknown_types_are_case_sensitive_and_list_the_allowed_names():
    with pytest.raises(ConfigError) as caught:
        build_transformer("simpletransformer", SEED_REVERSE)
    assert caught.value.problems == [
        "type: unknown transformer type 'simpletransformer' (did you mean SimpleTransformer?); expected one of "
        "SimpleTransformer, ReverseTransformer, CAImageTransformer, PassThroughTransformer, CompoundTransformer "
        "(alias CAImageTransfomer)"
    ]
    with pytest.raises(ConfigError, match="expected a TransformerSpec"):
        build_transformer(42)  # type: ignore[arg-type]


def test_poly_lithic_handler_name_is_supported():
    transformer = SimpleTransformer(SEED_SIMPLE)
    for name, value in (("LUME:MLFLOW:TEST_A", 1), ("LUME:MLFLOW:TEST_B", 2), ("LUME:MLFLOW:TEST_C", 3)):
        transformer.handler(name, {"value": value})
    assert transformer.latest_transformed["x3"] == 5.0
