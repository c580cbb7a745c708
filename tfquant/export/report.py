"""What an export produced and how closely it matches the Keras model."""

from __future__ import annotations

import collections
import dataclasses
from typing import Optional

from tfquant.export.flatbuffer import FlatbufferSummary, inspect_flatbuffer


def _kib(num_bytes: int) -> str:
    return f"{num_bytes / 1024:.1f} KiB"


@dataclasses.dataclass(frozen=True)
class OutputCheck:
    """One output's LiteRT values (XNNPACK, the default) against the integer-exact model
    (`tfquant.integer_model`; None when it does not compute the flatbuffer) and against the
    float simulation (the Keras model), counted in output steps."""
    output: int
    num_values: int
    differ_from_float: int
    differ_from_integer: Optional[int]


@dataclasses.dataclass
class ExportReport:
    flatbuffer: bytes = dataclasses.field(repr=False)
    path: Optional[str] = None
    size_bytes: int = 0
    op_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    weight_dtypes: dict[str, str] = dataclasses.field(default_factory=dict)  # tensor name -> type name
    float_ops: list[str] = dataclasses.field(default_factory=list)
    max_abs_diff_lsb: Optional[float] = None
    argmax_agreement: Optional[float] = None  # fraction in [0, 1]
    num_samples: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)
    summary: Optional[FlatbufferSummary] = dataclasses.field(default=None, repr=False)
    output_checks: list[OutputCheck] = dataclasses.field(default_factory=list)

    @classmethod
    def from_flatbuffer(
        cls,
        data: bytes,
        path: Optional[str] = None,
        max_abs_diff_lsb: Optional[float] = None,
        argmax_agreement: Optional[float] = None,
        num_samples: int = 0,
        notes: Optional[list[str]] = None,
    ) -> "ExportReport":
        """Fill the structural fields from the flatbuffer; the caller adds verification."""
        summary = inspect_flatbuffer(data)
        return cls(
            flatbuffer=bytes(data),
            path=path,
            size_bytes=summary.size_bytes,
            op_counts=dict(summary.op_counts()),
            weight_dtypes={name: w.type_name for name, w in summary.weight_tensors().items()},
            float_ops=[summary.describe_op(op) for op in summary.float_compute_ops()],
            max_abs_diff_lsb=max_abs_diff_lsb,
            argmax_agreement=argmax_agreement,
            num_samples=num_samples,
            notes=list(notes or []),
            summary=summary,
        )

    def weight_dtype_counts(self) -> collections.Counter:
        return collections.Counter(self.weight_dtypes.values())

    def _weight_rows(self) -> list[tuple[str, str]]:
        counts = self.weight_dtype_counts()
        sizes: collections.Counter = collections.Counter()
        if self.summary is not None:
            for w in self.summary.weight_tensors().values():
                sizes[w.type_name] += w.size_bytes
        rows = []
        for type_name, count in sorted(counts.items(), key=lambda kv: (-sizes[kv[0]], kv[0])):
            size = f"  {_kib(sizes[type_name])}" if self.summary is not None else ""
            rows.append((type_name, f"{count} tensor{'s' if count != 1 else ''}{size}"))
        return rows

    def __str__(self) -> str:
        rows: list[tuple[str, str]] = [
            ("file", self.path or "(not written)"),
            ("size", _kib(self.size_bytes)),
        ]
        ops = sorted(self.op_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        rows.append(("ops", ", ".join(f"{name} {count}" for name, count in ops) or "none"))
        weight_rows = self._weight_rows()
        for i, (type_name, text) in enumerate(weight_rows):
            rows.append(("weights" if i == 0 else "", f"{type_name:<8} {text}"))
        if not weight_rows:
            rows.append(("weights", "none"))
        if self.float_ops:
            for i, op in enumerate(self.float_ops):
                rows.append(("float ops" if i == 0 else "", op))
        else:
            rows.append(("float ops", "none"))
        if self.num_samples:
            lsb = "n/a" if self.max_abs_diff_lsb is None else f"{self.max_abs_diff_lsb:.2f} LSB"
            agree = "n/a" if self.argmax_agreement is None else f"{100 * self.argmax_agreement:.2f} %"
            rows.append(("verified", f"{self.num_samples} samples"))
            rows.append(("max |diff|", lsb))
            rows.append(("argmax agree", agree))
            for check in self.output_checks:
                label = "values differ" if len(self.output_checks) == 1 else f"output {check.output}"
                exact = ("integer model n/a" if check.differ_from_integer is None else
                         f"{check.differ_from_integer:,} from the integer model")
                rows.append((label, f"{check.differ_from_float:,} of {check.num_values:,} "
                                    f"from the float simulation, {exact}"))
        else:
            rows.append(("verified", "no"))
        for i, note in enumerate(self.notes):
            rows.append(("notes" if i == 0 else "", note))
        width = max(len(label) for label, _ in rows)
        lines = ["TFLite export report"]
        lines += [f"  {label:<{width}}  {value}" for label, value in rows]
        return "\n".join(lines)

    def __repr__(self) -> str:
        parts = [
            f"path={self.path!r}",
            f"size={_kib(self.size_bytes)}",
            f"ops={sum(self.op_counts.values())}",
            f"float_ops={len(self.float_ops)}",
        ]
        if self.num_samples:
            if self.max_abs_diff_lsb is not None:
                parts.append(f"max_abs_diff_lsb={self.max_abs_diff_lsb:.3g}")
            if self.argmax_agreement is not None:
                parts.append(f"argmax_agreement={self.argmax_agreement:.4f}")
            parts.append(f"num_samples={self.num_samples}")
        return f"ExportReport({', '.join(parts)})"
