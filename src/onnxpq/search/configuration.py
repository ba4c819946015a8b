"""Per-layer choices → pipeline text, with the target's own passes.

A target's pipeline splits into an exact *prefix* (cleanup) and its lossy
passes. The lossy passes that carry ``exclude_nodes`` and quantize the layers
are the target's *quantizers*: int8 quantizers (``quantize-static``,
``quantize-dynamic``: int8 weights and activations, ``LayerChoice(8, 8)``),
the weight-only ``quantize-weights`` (n-bit weights) and the n-bit activation
quantizer ``quantize-activations`` (n-bit layer inputs). The last two
combine per layer: ``w<b>a<a>`` is b-bit weights reading a-bit activations.
Other lossy passes (``quantize-gather``: embeddings, not planned layers) are
kept as they are whenever some layer is quantized.

A :class:`Configuration` (one :class:`LayerSetting` per planned layer) becomes,
in this order — prune first, then quantize ("Prune or quantize?": a slim
model quantized beats a fat one; pruning a quantized grid would re-quantize):

    prune-channels{ratio=0.0,per_node=[producer:r,...]}    groups: r on every layer producing
                                                           the owner's group (each Concat section)
    prune-magnitude{sparsity=0.0,per_node=[layer:s,...]}   unstructured, where the target skips zeros
    prune-nm{exclude_nodes=[layers without N:M]}            where the target runs N:M
    <int8 quantizers>{exclude_nodes=[+ layers not int8]}
    quantize-activations{bits=A,bits_per_node=[layer:a,...],exclude_nodes=[layers without a<a>]}
    quantize-weights{bits=B,bits_per_node=[layer:b,...],exclude_nodes=[layers not weight-quantized]}
    <other lossy passes>

B and A are the most common widths (ties: the first in graph order); the others are listed
per node. Activations are quantized before weights, so that GPTQ's Hessians
are those of the quantized inputs the layer will read. Options the target's
passes already set are kept (``method=gptq``, ``calibration=mse``,
``exclude_op_types``); only the per-node lists are added to. Passes with
nothing to do are left out, so a float configuration is the empty pipeline.
Nodes of ``quantize-activations``' op types that are not planned layers (an
activation × activation MatMul) get the common width A whenever some layer's
activations are quantized.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.pipeline_text import format_pipeline, parse_pipeline
from onnxpq.errors import PipelineError
from onnxpq.targets.profile import Target

__all__ = ["LayerSetting", "Configuration", "TargetPasses", "FLOAT_SETTING"]

ACTIVATION_QUANTIZERS = ("quantize-static", "quantize-dynamic")
WEIGHT_QUANTIZER = "quantize-weights"
ACTIVATION_BITS_QUANTIZER = "quantize-activations"
_QUANT = re.compile(r"w([2-8])(?:a([2-8]))?|a([2-8])")


@dataclass(frozen=True)
class LayerSetting:
    """What one layer gets: quantization, unstructured/N:M sparsity, and channel pruning of the group it owns.

    ``quant``: ``None`` (float), ``"int8"`` (the target's int8 quantizers), ``"w<b>"`` (b-bit weights,
    float activations), ``"w<b>a<a>"`` (b-bit weights reading a-bit activations) or ``"a<a>"``
    (a-bit activations, float weights); b and a in 2..8.
    ``sparsity``: fraction of weights zeroed (0 = dense); ``n_m``: an N:M pattern instead.
    ``prune_ratio``: fraction of its group's channels removed (owners only).

    Raises:
        PipelineError: ``quant`` is none of these.
    """

    quant: str | None = None
    sparsity: float = 0.0
    n_m: tuple[int, int] | None = None
    prune_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.quant is not None and self.quant != "int8" and _QUANT.fullmatch(self.quant) is None:
            raise PipelineError(f"layer setting: quantization {self.quant!r} is none of int8, w<b>, w<b>a<a>, a<a> (bits 2..8)")

    def _widths(self) -> tuple[int | None, int | None]:
        if self.quant is None:
            return None, None
        if self.quant == "int8":
            return 8, 8
        match = _QUANT.fullmatch(self.quant)
        assert match is not None  # checked in __post_init__
        weight, with_weight, alone = match.groups()
        activation = with_weight or alone
        return (int(weight) if weight else None), (int(activation) if activation else None)

    @property
    def weight_bits(self) -> int | None:
        return self._widths()[0]

    @property
    def activation_bits(self) -> int | None:
        return self._widths()[1]

    @property
    def density(self) -> float:
        if self.n_m is not None:
            return self.n_m[0] / self.n_m[1]
        return 1.0 - self.sparsity

    def label(self) -> str:
        """Short text: ``int8``, ``w4a8``, ``w4+s50%+prune25%``, ``float``."""
        parts = [self.quant] if self.quant else []
        if self.n_m is not None:
            parts.append(f"{self.n_m[0]}:{self.n_m[1]}")
        elif self.sparsity:
            parts.append(f"s{self.sparsity:.0%}")
        if self.prune_ratio:
            parts.append(f"prune{self.prune_ratio:.0%}")
        return "+".join(parts) or "float"


FLOAT_SETTING = LayerSetting()


@dataclass(frozen=True)
class Configuration:
    """One setting per planned layer (layers left out are float)."""

    settings: tuple[tuple[str, LayerSetting], ...]

    @classmethod
    def of(cls, settings: Mapping[str, LayerSetting]) -> Configuration:
        return cls(tuple(sorted((k, v) for k, v in settings.items() if v != FLOAT_SETTING)))

    def as_dict(self) -> dict[str, LayerSetting]:
        return dict(self.settings)


class TargetPasses:
    """The target's pipeline, split into prefix, quantizers and the rest; builds configuration pipelines.

    Args:
        target: the target profile.
        layers: the planned layers (node names), in graph order.
        weight_method: override ``quantize-weights``' ``method`` (e.g. ``rtn`` for cheap sensitivity).
        weight_bits: a subset of the target's weight widths to offer (None: all of them).
        group_producers: owner layer → every layer producing its channel group (see
            :attr:`~onnxpq.search.sensitivity.LayerSpace.owner_producers`): an owner's ``prune_ratio``
            is given to each of them, so a Concat group loses that fraction of every section, as
            ``prune-channels{ratio=r}`` would (the owner alone: one section only).

    Activation widths (``target.quantize.activation_bits`` in 2..8) are offered
    when the target's pipeline has ``quantize-activations``.
    """

    def __init__(
        self, target: Target, layers: Sequence[str], *, weight_method: str | None = None,
        weight_bits: Sequence[int] | None = None, group_producers: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        passes = parse_pipeline(target.pipeline)
        self.target = target
        self.layers = list(layers)
        self.group_producers = {owner: tuple(p) for owner, p in (group_producers or {}).items()}
        allowed = set(target.quantize.weight_bits)
        if weight_bits is not None and not set(weight_bits) <= allowed:
            raise PipelineError(f"weight bits {sorted(set(weight_bits) - allowed)} are not in target {target.name}'s {sorted(allowed)}")
        self.weight_bits = tuple(sorted(weight_bits)) if weight_bits is not None else tuple(sorted(allowed))
        cut = next((i for i, p in enumerate(passes) if not p.exact), len(passes))
        self.prefix: list[OnnxpqPass] = passes[:cut]
        lossy = passes[cut:]
        self.activation = [p for p in lossy if p.name in ACTIVATION_QUANTIZERS]
        self.activation_bits_passes = [p for p in lossy if p.name == ACTIVATION_BITS_QUANTIZER]
        self.activation_bits = (
            tuple(sorted(b for b in set(target.quantize.activation_bits) if 2 <= b <= 8)) if self.activation_bits_passes else ()
        )
        self.weights = [p for p in lossy if p.name == WEIGHT_QUANTIZER]
        if weight_method is not None:
            if self.weights:
                self.weights = [type(p)(**{**p.options(), "method": weight_method}) for p in self.weights]
            else:
                self.weights = parse_pipeline(f"{WEIGHT_QUANTIZER}{{method={weight_method}}}")
        self.others = [
            p for p in lossy
            if p not in self.activation and p not in self.weights and p.name not in (WEIGHT_QUANTIZER, ACTIVATION_BITS_QUANTIZER)
        ]

    @property
    def prefix_text(self) -> str:
        return format_pipeline(self.prefix) if self.prefix else ""

    def quant_choices(self) -> list[str]:
        """The quantization candidates this target offers per layer: ``int8`` and/or ``w<b>``."""
        choices = ["int8"] if self.activation else []
        if self.weights or not self.activation:
            choices += [f"w{b}" for b in self.weight_bits if 2 <= b <= 8]
        return choices

    def activation_choices(self) -> list[str]:
        """The activation-only candidates ``a<a>`` (measured alone, then combined with ``w<b>``); empty without ``quantize-activations``."""
        return [f"a{a}" for a in self.activation_bits]

    def reference_quant(self) -> str:
        """The target's default treatment of a layer: ``int8``, or ``w<B>`` / ``w<B>a<A>`` from its quantizers' widths."""
        if self.activation:
            return "int8"
        weight = f"w{self.weights[0].bits}" if self.weights else "w8"
        return f"{weight}a{self.activation_bits_passes[0].bits}" if self.activation_bits_passes else weight

    def sparsity_kinds(self) -> tuple[bool, tuple[tuple[int, int], ...]]:
        """(unstructured zeros pay, N:M patterns that pay)."""
        return self.target.sparsity.unstructured == "compute", tuple(self.target.sparsity.n_m)

    @staticmethod
    def _with(pass_: OnnxpqPass, **changes: object) -> OnnxpqPass:
        return type(pass_)(**{**pass_.options(), **changes})

    def lossy_passes(self, config: Configuration | Mapping[str, LayerSetting], *, others: bool = True) -> list[OnnxpqPass]:
        """The lossy passes realising ``config`` (see the module docstring)."""
        settings = config.as_dict() if isinstance(config, Configuration) else dict(config)
        unknown = sorted(set(settings) - set(self.layers))
        if unknown:
            raise PipelineError(f"configuration names layers that are not planned: {', '.join(unknown[:5])}")
        get = lambda name: settings.get(name, FLOAT_SETTING)  # noqa: E731
        out: list[OnnxpqPass] = []
        prune = [
            f"{p}:{get(n).prune_ratio!r}"
            for n in self.layers if get(n).prune_ratio > 0
            for p in self.group_producers.get(n, (n,))
        ]
        if prune:
            out += parse_pipeline(f"prune-channels{{ratio=0.0,per_node=[{','.join(prune)}]}}")
        sparse = [f"{n}:{get(n).sparsity!r}" for n in self.layers if get(n).n_m is None and get(n).sparsity > 0]
        if sparse:
            out += parse_pipeline(f"prune-magnitude{{sparsity=0.0,per_node=[{','.join(sparse)}]}}")
        patterns = sorted({get(n).n_m for n in self.layers if get(n).n_m is not None})  # type: ignore[type-var]
        for n_, m_ in patterns:
            keep_out = [n for n in self.layers if get(n).n_m != (n_, m_)]
            out += parse_pipeline(f"prune-nm{{n={n_},m={m_},exclude_nodes=[{','.join(keep_out)}]}}")
        int8 = [n for n in self.layers if get(n).quant == "int8"]
        if int8:
            if not self.activation:
                raise PipelineError(f"target {self.target.name} has no activation quantizer for int8 layers")
            not_int8 = tuple(n for n in self.layers if get(n).quant != "int8")
            for p in self.activation:
                out.append(self._with(p, exclude_nodes=tuple(dict.fromkeys([*p.options()["exclude_nodes"], *not_int8]))))
        widths = {n: get(n).activation_bits for n in self.layers if get(n).quant not in (None, "int8") and get(n).activation_bits}
        if widths:
            base = self.activation_bits_passes[0] if self.activation_bits_passes else parse_pipeline(ACTIVATION_BITS_QUANTIZER)[0]
            out.append(self._per_node_bits(base, widths))
        bits = {n: get(n).weight_bits for n in self.layers if (get(n).quant or "").startswith("w")}
        if bits:
            base = self.weights[0] if self.weights else parse_pipeline(WEIGHT_QUANTIZER)[0]
            out.append(self._per_node_bits(base, bits))
        if others and any(get(n).quant for n in self.layers):
            out += self.others
        return out

    def _per_node_bits(self, base: OnnxpqPass, bits: Mapping[str, int | None]) -> OnnxpqPass:
        """``base`` with ``bits`` = the most common width (ties: the first in graph order), the others per node, other layers excluded."""
        common = Counter(bits.values()).most_common(1)[0][0]
        per_node = tuple(f"{n}:{b}" for n, b in bits.items() if b != common)
        excluded = tuple(n for n in self.layers if n not in bits)
        return self._with(base, bits=common, bits_per_node=per_node,
                          exclude_nodes=tuple(dict.fromkeys([*base.options()["exclude_nodes"], *excluded])))

    def lossy_text(self, config: Configuration | Mapping[str, LayerSetting], *, others: bool = True) -> str:
        passes = self.lossy_passes(config, others=others)
        return format_pipeline(passes) if passes else ""

    def full_text(self, config: Configuration | Mapping[str, LayerSetting]) -> str:
        """Prefix + lossy passes: the pipeline to run on the original model."""
        parts = [t for t in (self.prefix_text, self.lossy_text(config)) if t]
        return ",".join(parts)
