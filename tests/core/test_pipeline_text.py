"""Pipeline text: parse/format round trips and clear errors."""

from __future__ import annotations

from typing import Literal

import onnx_ir as ir
import pytest

from onnxpq.core.pass_base import OnnxpqPass, OptionSpec
from onnxpq.core.pipeline_text import format_pipeline, format_value, parse_pipeline, parse_value
from onnxpq.errors import PipelineError


class _Options(OnnxpqPass):
    """A pass with one option of every supported type (not registered)."""

    name = "options-probe"

    def __init__(
        self,
        ratio: float = 0.5,
        *,
        bits: int = 8,
        mode: Literal["l1", "l2"] = "l1",
        flag: bool = False,
        names: tuple[str, ...] = (),
        limit: int | None = None,
    ) -> None:
        self.ratio, self.bits, self.mode, self.flag, self.names, self.limit = ratio, bits, mode, flag, names, limit

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, False)


@pytest.fixture
def probe_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxpq.core import registry

    registry.registered_passes()
    monkeypatch.setitem(registry._REGISTRY, _Options.name, _Options)


@pytest.mark.parametrize(
    "text",
    [
        "fold-batchnorm",
        "constants-to-initializers,eliminate-identity,fold-batchnorm,eliminate-dead",
        "eliminate-dead,eliminate-dead",
    ],
)
def test_canonical_text_formats_back_to_itself(text: str) -> None:
    assert format_pipeline(parse_pipeline(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "options-probe{ratio=0.3}",
        "options-probe{ratio=0.3,bits=4,mode=l2,flag=true,names=[conv1,conv_2],limit=7}",
        "options-probe{names=[]}",
        "fold-batchnorm,options-probe{mode=l2},eliminate-dead",
    ],
)
def test_options_round_trip(probe_registered: None, text: str) -> None:
    passes = parse_pipeline(text)
    assert parse_pipeline(format_pipeline(passes)) == passes
    assert parse_pipeline(format_pipeline(passes, full=True)) == passes


def test_whitespace_and_defaults_are_normalised(probe_registered: None) -> None:
    passes = parse_pipeline(" options-probe { ratio = 0.5 , bits=4 } , fold-batchnorm ")
    assert format_pipeline(passes) == "options-probe{bits=4},fold-batchnorm"


def test_full_format_lists_every_option(probe_registered: None) -> None:
    text = format_pipeline(parse_pipeline("options-probe"), full=True)
    assert text == "options-probe{ratio=0.5,bits=8,mode=l1,flag=false,names=[],limit=none}"


def test_parsed_values_have_the_annotated_types(probe_registered: None) -> None:
    (probe,) = parse_pipeline("options-probe{ratio=1,bits=3,flag=true,names=[a,b],limit=none}")
    assert probe.ratio == 1.0 and isinstance(probe.ratio, float)
    assert probe.bits == 3 and probe.flag is True and probe.names == ("a", "b") and probe.limit is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("nope", "unknown pass 'nope'; valid passes: constants-to-initializers"),
        ("fold-batchnorm,", "empty pass name"),
        ("fold-batchnorm{x=1}", "unknown option 'x'"),
        ("options-probe{bits=four}", "expects an integer"),
        ("options-probe{ratio=abc}", "expects a number"),
        ("options-probe{flag=yes}", "expects true or false"),
        ("options-probe{mode=l3}", "must be one of l1, l2"),
        ("options-probe{names=a}", "expects a list"),
        ("options-probe{bits}", "key=value"),
        ("options-probe{bits=1,bits=2}", "given twice"),
        ("options-probe{bits=1", "unclosed"),
        ("options-probe}", "unbalanced"),
        ("options-probe{bits=1}x", "must end with '}'"),
        ("options-probe{mode=a b}", "not a valid value"),
    ],
)
def test_bad_text_raises_pipeline_error_naming_the_problem(probe_registered: None, text: str, fragment: str) -> None:
    with pytest.raises(PipelineError, match=None) as info:
        parse_pipeline(text)
    assert fragment in str(info.value)


def test_unknown_option_error_lists_valid_options(probe_registered: None) -> None:
    with pytest.raises(PipelineError) as info:
        parse_pipeline("options-probe{ratoi=0.1}")
    assert "ratio: float" in str(info.value) and "mode: 'l1' | 'l2'" in str(info.value)


@pytest.mark.parametrize("value", [0.1, 1e-07, 3.0, -2, True, False, None, ("a", "b"), (1, 2), "per-channel"])
def test_format_value_inverts_parse_value(value: object) -> None:
    annotation = {float: float, int: int, bool: bool, str: str}.get(type(value), tuple[int, ...])
    if value is None:
        annotation = int | None
    elif isinstance(value, tuple) and isinstance(value[0], str):
        annotation = tuple[str, ...]
    spec = OptionSpec("x", annotation, None)
    assert parse_value(spec, format_value(value), "probe") == value
