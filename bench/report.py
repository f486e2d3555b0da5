"""Rows of the results table and their formatting. Every figure carries its own baseline and target."""

from __future__ import annotations

from dataclasses import dataclass

HIGHER, LOWER = "higher", "lower"  # which way is better


@dataclass
class Row:
    figure: str
    unit: str  # "ev/s", "s", "B" (bytes)
    ours: float | None
    baseline: float | None
    better: str = LOWER
    target: float | None = None  # absolute target on `ours`, in `unit`
    target_ratio: float | None = None  # minimum ratio over the baseline
    note: str = ""  # "n/a: why", shown instead of the numbers when ours is None
    # Latency rows: the value is the median and these the p99s, shown beside it. `target_on` says what the
    # target applies to: "value", "tail" or "both".
    ours_p99: float | None = None
    baseline_p99: float | None = None
    target_on: str = "value"

    @property
    def ratio(self) -> float | None:
        """How many times better ours is than the baseline: > 1 is better, whichever way the unit goes."""
        if not self.ours or not self.baseline:
            return None
        return self.ours / self.baseline if self.better == HIGHER else self.baseline / self.ours

    @property
    def met(self) -> bool | None:
        if self.ours is None or (self.target is None and self.target_ratio is None):
            return None
        ok = True
        if self.target is not None:
            checked = {"value": [self.ours], "tail": [self.ours_p99], "both": [self.ours, self.ours_p99]}
            ok = all(v is not None and self._within(v) for v in checked[self.target_on])
        if self.target_ratio is not None:
            ok = ok and self.ratio is not None and self.ratio >= self.target_ratio
        return ok

    def _within(self, value: float) -> bool:
        return value >= self.target if self.better == HIGHER else value <= self.target


def fmt(value: float | None, unit: str, *, exact: bool = True) -> str:
    """A measured value (exact=True: fixed decimals, so columns line up) or a round target (exact=False)."""
    if value is None:
        return "-"
    num = (lambda x, spec: format(x, spec)) if exact else (lambda x, spec: format(x, "g"))
    if unit == "ev/s":
        return f"{num(value / 1e6, '.2f')} M ev/s" if value >= 1e6 else f"{value / 1e3:,.0f} k ev/s"
    if unit == "s":
        if value >= 1:
            return f"{num(value, '.2f')} s"
        if value >= 1e-3:
            return f"{num(value * 1e3, '.2f')} ms"
        return f"{value * 1e6:.0f} µs"
    if unit == "B":
        return f"{num(value / 2**20, '.3f')} MB"
    return f"{value:g} {unit}"


def _ratio_text(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.1f}×" if ratio >= 1 else f"{ratio:.2g}×"


def _value_text(value: float | None, p99: float | None, unit: str) -> str:
    return fmt(value, unit) if p99 is None else f"{fmt(value, unit)}, p99 {fmt(p99, unit)}"


def _target_text(row: Row) -> str:
    parts = []
    if row.target is not None:
        what = {"value": "", "tail": "p99 ", "both": "median & p99 "}[row.target_on] if row.ours_p99 else ""
        parts.append(what + ("≥ " if row.better == HIGHER else "< ") + fmt(row.target, row.unit, exact=False))
    if row.target_ratio is not None:
        parts.append(f"≥ {row.target_ratio:g}× baseline")
    return ", ".join(parts) or "-"


def _cells(row: Row) -> tuple[str, ...]:
    if row.ours is None:  # (figure, reason): the reason runs across the number columns
        return row.figure, row.note or "n/a"
    met = row.met
    return (
        row.figure,
        _value_text(row.ours, row.ours_p99, row.unit),
        _value_text(row.baseline, row.baseline_p99, row.unit),
        _ratio_text(row.ratio),
        _target_text(row),
        "" if met is None else ("yes" if met else "NO"),
    )


def render(rows: list[Row]) -> str:
    header = ("figure", "ours", "baseline", "ratio", "target", "met")
    table = [header, *(_cells(row) for row in rows)]
    widths = [max(len(cells[i]) for cells in table if len(cells) == len(header)) for i in range(len(header))]
    widths[0] = max(len(cells[0]) for cells in table)
    numeric = (1, 2, 3)
    out = []
    for k, cells in enumerate(table):
        if len(cells) == len(header):
            pairs = enumerate(zip(cells, widths, strict=True))
            text = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in pairs]
        else:
            text = [cells[0].ljust(widths[0]), *cells[1:]]
        out.append(" | ".join(text).rstrip())
        if k == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out)
