"""What a campaign costs: the price list (`--prices`), each row's price, the estimate by country, and the
accounting behind the spend cap (`--max-cost`).

A price list is CSV or Parquet, local or s3://, one row per (provider, country) or (provider, calling code):
`provider`, `country` (ISO region) and/or `calling_code` (digits), `price_per_segment`, `currency`. A row's
price is its provider's price for the row's country, else the one for the longest calling code its E.164
number starts with, else none. A row costs price × segments.

Amounts are added up as integers of 1e-9 currency units (`SCALE`): the cap is compared exactly, and a
running budget of reservations and refunds never drifts as floats would.

What counts against the cap: the rows this attempt sends, the rows it holds (`held`: a later release attempt
of the campaign sends them), and whatever earlier attempts left `accepted`, `unknown` (it may have been
accepted) or `held`. Rows this attempt plans again are counted once, as this attempt's.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.errors import ConfigError
from smscast.providers.names import PROVIDER_NAMES
from smscast.status import NOT_SENT, Status

SCALE = 1_000_000_000
COST = "cost"  # the planned rows' per-row cost column (currency units; null: no price)
# Planned rows whose cost is spent whatever this attempt makes of them (an earlier attempt left them `unknown`).
COST_KEPT = "cost_kept"
OVER_BUDGET = "over_budget"  # error_code of rows a campaign did not send because the cap was reached
# Statuses whose cost is spent, or may be: the provider took it, may have, or a release will send it.
COMMITTED: tuple[str, ...] = (Status.ACCEPTED.value, Status.UNKNOWN.value, Status.HELD.value)
SPENT: frozenset[str] = frozenset({Status.ACCEPTED.value, Status.UNKNOWN.value})

_COLUMNS = ("provider", "price_per_segment", "currency")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def units(amount: float) -> int:
    return round(amount * SCALE)


def units_of(column: str = COST) -> pl.Expr:
    """A cost column in integer units per row (null: 0): summed exactly, whatever the number of rows."""
    return (pl.col(column) * SCALE).round(0).cast(pl.Int64).fill_null(0)


def money(amount_units: int, currency: str | None) -> str:
    """`EUR 12.50`, `EUR 0.0345`: two decimals at least, more only where the amount has them."""
    text = f"{amount_units / SCALE:,.6f}".rstrip("0")
    decimals = len(text.split(".")[1])
    text += "0" * max(0, 2 - decimals)
    return f"{currency} {text}" if currency else text


@dataclass(frozen=True)
class PriceTable:
    source: str
    by_country: pl.DataFrame  # _prov, _country, _price
    by_code: pl.DataFrame  # _prov, _code, _price
    currencies: dict[str, str]  # provider -> its one currency


def load_prices(uri: str) -> PriceTable:
    """Read and check a price list; ConfigError naming the file, the row and the column of what is wrong."""
    where = storage.redact(uri)
    lower = uri.lower().split("?")[0]
    try:
        if lower.endswith(".csv"):
            raw = pl.read_csv(io.BytesIO(storage.get_bytes(uri)), infer_schema=False)
            label = "line {}"
            first = 2  # the header is line 1
        elif lower.endswith(".parquet"):
            raw = storage.read_parquet(uri)
            label, first = "row {}", 1
        else:
            raise ConfigError(f"price list {where}: use a .csv or .parquet file")
    except FileNotFoundError:
        raise ConfigError(f"price list {where} not found") from None
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ConfigError(f"price list {where} cannot be read: {exc}") from None
    raw = raw.rename({c: c.strip().lower().replace(" ", "_") for c in raw.columns})
    missing = [c for c in _COLUMNS if c not in raw.columns]
    if not {"country", "calling_code"} & set(raw.columns):
        missing.append("country or calling_code")
    if missing:
        raise ConfigError(
            f"price list {where}: missing column(s) {', '.join(missing)} (a price list has provider, country "
            "or calling_code, price_per_segment, currency)"
        )
    text = raw.select(
        pl.col(c).cast(pl.String).str.strip_chars() if c in raw.columns else pl.lit(None, pl.String).alias(c)
        for c in ("provider", "country", "calling_code", "price_per_segment", "currency")
    )
    return _checked(text, where, label, first)


def _checked(text: pl.DataFrame, where: str, label: str, first: int) -> PriceTable:
    import phonenumbers

    countries: dict[tuple[str, str], int] = {}
    codes: dict[tuple[str, str], int] = {}
    rows: list[tuple[str, str | None, str | None, float, str]] = []
    currencies: dict[str, dict[str, int]] = {}
    for n, (prov, country, code, price, currency) in enumerate(text.iter_rows(), start=first):
        if not any((prov, country, code, price, currency)):
            continue  # a blank line

        def bad(column: str, why: str, n: int = n) -> ConfigError:
            return ConfigError(f"price list {where}, {label.format(n)}, column {column}: {why}")

        if not prov:
            raise bad("provider", "empty")
        if prov not in PROVIDER_NAMES:
            raise bad("provider", f"{prov!r} is not a provider ({', '.join(PROVIDER_NAMES)})")
        country = country.upper() if country else None
        if country is not None and country not in phonenumbers.SUPPORTED_REGIONS:
            raise bad("country", f"{country!r} is not an ISO region code with phone numbers (GB, IE, US, …)")
        code = code.removeprefix("+").replace(" ", "") if code else None
        if code is not None and not (code.isdigit() and code.isascii()):
            raise bad("calling_code", f"{code!r} is not a calling code (digits, e.g. 44 or 1876)")
        if country is None and code is None:
            raise bad("country", "empty, and so is calling_code: a price needs one of them")
        try:
            amount = float(price or "")
        except ValueError:
            raise bad("price_per_segment", f"{price!r} is not a number") from None
        if not math.isfinite(amount) or amount < 0:
            raise bad("price_per_segment", f"{price!r}: a price is a number of 0 or more")
        if not currency or not _CURRENCY.match(currency.upper()):
            raise bad("currency", f"{currency!r} is not a currency code (EUR, GBP, USD, …)")
        currency = currency.upper()
        for key, seen, column in ((country, countries, "country"), (code, codes, "calling_code")):
            if key is None:
                continue
            if (prov, key) in seen:
                earlier = label.format(seen[(prov, key)])
                raise bad(column, f"{prov} {key} is priced twice (also on {earlier})")
            seen[(prov, key)] = n
        currencies.setdefault(prov, {}).setdefault(currency, n)
        rows.append((prov, country, code, amount, currency))
    mixed = {p: c for p, c in currencies.items() if len(c) > 1}
    if mixed:
        detail = "; ".join(f"{p}: {', '.join(sorted(c))}" for p, c in sorted(mixed.items()))
        raise ConfigError(f"price list {where}: one currency per provider, but {detail}")
    frame = pl.DataFrame(
        rows,
        schema={
            "_prov": pl.String,
            "_country": pl.String,
            "_code": pl.String,
            "_price": pl.Float64,
            "c": pl.String,
        },
        orient="row",
    )
    return PriceTable(
        source=where,
        by_country=frame.filter(pl.col("_country").is_not_null()).select("_prov", "_country", "_price"),
        by_code=frame.filter(pl.col("_code").is_not_null()).select("_prov", "_code", "_price"),
        currencies={p: next(iter(c)) for p, c in currencies.items()},
    )


def priced(rows: pl.DataFrame, table: PriceTable, provider: str | None) -> pl.DataFrame:
    """`rows` with `_price` (per segment; null: none) and `_where` (the country, else `+<calling code>`, that
    the price or its absence is reported under). `provider` None: each row's own `provider` column."""
    prov = pl.lit(provider, pl.String) if provider is not None else pl.col("provider").cast(pl.String)
    country = pl.col("country").cast(pl.String) if "country" in rows.columns else pl.lit(None, pl.String)
    digits = pl.col("phone").cast(pl.String).str.extract(r"^\+(\d+)$")
    df = rows.with_columns(_prov=prov, _country=country, _digits=digits)
    df = df.join(
        table.by_country.rename({"_price": "_by_country"}),
        on=["_prov", "_country"],
        how="left",
        maintain_order="left",
    )
    matched: list[str] = []
    codes = table.by_code.with_columns(_len=pl.col("_code").str.len_chars())
    for length in sorted(codes.get_column("_len").unique().to_list(), reverse=True):
        name = f"_code{length}"
        df = df.with_columns(pl.col("_digits").str.slice(0, length).alias(name)).join(
            codes.filter(pl.col("_len") == length).select(
                "_prov", pl.col("_code").alias(name), pl.col("_price").alias(f"{name}_price")
            ),
            on=["_prov", name],
            how="left",
            maintain_order="left",
        )
        # Longest first: +1876 (Jamaica) wins over +1 where both are listed.
        df = df.with_columns(pl.when(pl.col(f"{name}_price").is_not_null()).then(pl.col(name)).alias(name))
        matched.append(name)
    code = pl.coalesce(matched) if matched else pl.lit(None, pl.String)
    price_by_code = pl.coalesce([f"{m}_price" for m in matched]) if matched else pl.lit(None, pl.Float64)
    df = df.with_columns(_code=code, _price=pl.coalesce("_by_country", price_by_code))
    df = df.with_columns(
        _where=pl.coalesce("_country", pl.when(pl.col("_code").is_not_null()).then("+" + pl.col("_code")))
    )
    drop = [
        "_prov",
        "_country",
        "_digits",
        "_by_country",
        "_code",
        *matched,
        *(f"{m}_price" for m in matched),
    ]
    return df.drop(drop)


def with_costs(rows: pl.DataFrame, table: PriceTable, provider: str | None) -> pl.DataFrame:
    """`rows` with `cost` (price × segments, currency units; null where there is no price)."""
    df = priced(rows, table, provider)
    segments = pl.col("segments").cast(pl.Float64) if "segments" in rows.columns else pl.lit(None, pl.Float64)
    return df.with_columns((pl.col("_price") * segments).alias(COST)).drop("_price", "_where")


def unpriced_labels(df: pl.DataFrame) -> pl.DataFrame:
    """Rows with no price, labelled by their country, else their number's calling code (found from its first
    three digits: calling codes are prefix-free), else `unknown`."""
    import phonenumbers

    prefixes = df.get_column("_p3").unique().drop_nulls().to_list()
    known = phonenumbers.COUNTRY_CODE_TO_REGION_CODE
    found = {p: next((p[:n] for n in (1, 2, 3) if int(p[:n]) in known), None) for p in prefixes}
    mapping = pl.DataFrame(
        {"_p3": list(found), "_cc": list(found.values())}, schema={"_p3": pl.String, "_cc": pl.String}
    )
    return df.join(mapping, on="_p3", how="left", maintain_order="left").with_columns(
        _where=pl.coalesce("_where", "+" + pl.col("_cc"), pl.lit("unknown"))
    )


@dataclass(frozen=True)
class CostEstimate:
    """What an attempt's rows cost (all amounts in integer units: `SCALE`). From planned rows (a dry run,
    the start check) `estimate` is what the rows to send would cost; from an attempt's results, what the rows
    it sent or tried to send were estimated at, and `accepted` what the provider took."""

    provider: str
    currency: str | None
    estimate: int
    held: int
    accepted: int
    by_country: list[dict[str, Any]]  # country (or +code), rows, segments, estimate, accepted
    unpriced: list[dict[str, Any]]  # country (or +code), rows: rows to send or held with no price
    max_cost: float | None = None
    spent_before: int = 0  # committed by earlier attempts (accepted, unknown, held), when known
    over_budget_rows: int = 0
    source: str = field(default="", compare=False)

    @property
    def unpriced_rows(self) -> int:
        return sum(int(u["rows"]) for u in self.unpriced)

    def money(self, amount_units: int) -> str:
        return money(amount_units, self.currency)

    def to_dict(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "estimate": self.estimate / SCALE,
            "accepted": self.accepted / SCALE,
            "held": self.held / SCALE,
            "spent_before": self.spent_before / SCALE,
            "max_cost": self.max_cost,
            "by_country": [
                {**c, "estimate": c["estimate"] / SCALE, "accepted": c["accepted"] / SCALE}
                for c in self.by_country
            ],
            "unpriced_rows": self.unpriced_rows,
            "unpriced": self.unpriced,
            "over_budget_rows": self.over_budget_rows,
        }


def estimate(
    rows: pl.DataFrame,
    table: PriceTable,
    provider: str,
    *,
    max_cost: float | None = None,
    spent_before: int = 0,
) -> CostEstimate:
    """The cost of `rows` (planned rows: status null to send; or an attempt's results), by country."""
    df = priced(rows.drop(COST, strict=False), table, provider)
    status = pl.col("status").cast(pl.String)
    df = df.with_columns(
        _send=status.is_null() | ~status.is_in([s.value for s in NOT_SENT]),
        _held=(status == Status.HELD.value).fill_null(False),
        _accepted=(status == Status.ACCEPTED.value).fill_null(False),
        _seg=pl.col("segments").cast(pl.Int64).fill_null(0),
        _p3=pl.col("phone").cast(pl.String).str.extract(r"^\+(\d{1,3})"),
    ).with_columns(cost=pl.col("_price") * pl.col("_seg"))
    df = df.with_columns(_units=units_of())
    counted = df.filter(pl.col("_send") | pl.col("_held"))
    unpriced = unpriced_labels(counted.filter(pl.col("_price").is_null()))
    missing = (
        unpriced.group_by("_where").agg(rows=pl.len()).sort(["rows", "_where"], descending=[True, False])
    )
    sending = df.filter(pl.col("_send"))
    by_country = (
        sending.filter(pl.col("_price").is_not_null())
        .group_by("_where")
        .agg(
            rows=pl.len(),
            segments=pl.col("_seg").sum(),
            estimate=pl.col("_units").sum(),
            accepted=pl.col("_units").filter(pl.col("_accepted")).sum(),
        )
        .sort(["estimate", "_where"], descending=[True, False])
    )
    over = 0
    if "error_code" in df.columns:
        over = df.filter((pl.col("error_code") == OVER_BUDGET).fill_null(False)).height
    return CostEstimate(
        provider=provider,
        currency=table.currencies.get(provider),
        estimate=int(sending.get_column("_units").sum()),
        held=int(df.filter(pl.col("_held")).get_column("_units").sum()),
        accepted=int(df.filter(pl.col("_accepted")).get_column("_units").sum()),
        by_country=[
            {"country": w, "rows": int(r), "segments": int(s), "estimate": int(e), "accepted": int(a)}
            for w, r, s, e, a in by_country.iter_rows()
        ],
        unpriced=[{"country": w, "rows": int(r)} for w, r in missing.iter_rows()],
        max_cost=max_cost,
        spent_before=spent_before,
        over_budget_rows=over,
        source=table.source,
    )


def estimate_for(
    rows: pl.DataFrame,
    spec: CampaignSpec,
    *,
    table: PriceTable | None = None,
    spent_before: int = 0,
) -> CostEstimate | None:
    """The estimate a summary shows for `rows` (a dry run's planned rows, or an attempt's results), None when
    the campaign has no price list."""
    if spec.prices is None:
        return None
    table = table or load_prices(spec.prices)
    return estimate(rows, table, spec.provider, max_cost=spec.max_cost, spent_before=spent_before)


def describe(
    cost: dict[str, Any], *, dry_run: bool, over_budget: int, top: int = 10
) -> tuple[str, list[str], list[list[str]]]:
    """A summary's cost (`CostEstimate.to_dict()`) in words: its headline, the notes on what it leaves out,
    and a table by country (a header row, then the costliest `top`)."""

    def amount(value: float) -> str:
        return money(units(value), cost.get("currency"))

    cap = cost.get("max_cost")
    head = f"{amount(cost['estimate'])} estimated" + (
        "" if dry_run else f" · {amount(cost['accepted'])} accepted"
    )
    if cap is not None:
        head += f" · cap {amount(cap)}"
        head += f" ({amount(cost['spent_before'])} committed before)" if cost.get("spent_before") else ""
    notes = [f"{amount(cost['held'])} more for held rows, sent when released"] if cost.get("held") else []
    if cost["unpriced_rows"]:
        missing = ", ".join(f"{u['country']} {u['rows']:,}" for u in cost["unpriced"][:top])
        n = cost["unpriced_rows"]
        notes.append(f"{n:,} row{'s' if n != 1 else ''} with no price in the price list ({missing})")
    need = cost["estimate"] + cost.get("held", 0) + cost.get("spent_before", 0)
    if dry_run and cap is not None and (cost["unpriced_rows"] or units(need) > units(cap)):
        why = "rows without a price" if cost["unpriced_rows"] else f"{amount(need)} is over the cap"
        notes.append(f"the real run would not start: {why}")
    if over_budget:
        notes.append(f"{over_budget:,} rows not sent: the spend cap ({amount(cap or 0)}) was reached")
    table = [["country", "rows", "segments", "estimated", *([] if dry_run else ["accepted"])]]
    for c in cost["by_country"][:top]:
        cells = [c["country"], f"{c['rows']:,}", f"{c['segments']:,}", amount(c["estimate"])]
        table.append(cells + ([] if dry_run else [amount(c["accepted"])]))
    if len(cost["by_country"]) > top:
        table.append([f"+{len(cost['by_country']) - top} more", *[""] * (len(table[0]) - 1)])
    return head, notes, table
