"""The book's table schema: table names, required columns, reject reasons and the reject message.

One home for what the readers (``gpurisk.io``), the row validation
(``gpurisk.validate``) and ``Book.from_frames`` all need, so none of them
imports another for it. Documented in docs/data-format.md.
"""

from __future__ import annotations

#: the tables of a book, in the order they are validated and reported
TABLES = ("instruments", "market", "index", "positions", "balances")
#: tables a book may have; absent means the default (``accounts``: each account is its own group)
OPTIONAL_TABLES = ("accounts",)

#: required columns per table (extra columns are allowed and carried along)
REQUIRED_COLUMNS = {
    "instruments": (
        "instrument_id",
        "venue",
        "underlying",
        "kind",
        "settlement",
        "contract_size",
        "expiry",
        "strike",
        "option_type",
    ),
    "market": ("instrument_id", "underlying_price", "implied_vol"),
    "index": ("underlying", "price"),
    "positions": ("account_id", "instrument_id", "quantity"),
    "balances": ("account_id", "venue", "asset", "amount"),
    "accounts": ("account_id", "group_id"),
}

#: optional columns of a table: read when present, defaulted when absent
OPTIONAL_COLUMNS = {
    "accounts": ("name", "kind"),
}
#: ``kind`` of an account the accounts table leaves empty (or of an account it does not list)
DEFAULT_ACCOUNT_KIND = "unspecified"

#: rows with the same key are summed into one (netting); the validation summary counts them as ``merged``
MERGE_KEYS = {
    "positions": ("account_id", "instrument_id"),
    "balances": ("account_id", "venue", "asset"),
}

#: reason code -> what it means (the message of a reject starts with this text)
REASONS = {
    "missing_value": "required value is empty",
    "wrong_type": "value is not of the expected type",
    "non_finite": "value is not finite",
    "non_positive": "value must be > 0",
    "zero_quantity": "quantity is zero",
    "unknown_kind": "kind is not spot, future, perpetual or option",
    "unknown_settlement": "settlement is not linear or inverse",
    "bad_option_type": "option_type is not call or put",
    "unexpected_value": "value must be empty for this kind",
    "inverse_spot": "spot cannot be inverse-settled",
    "bad_contract_size": "inverse option contract_size must be 1 coin",
    "expired_instrument": "instrument expired at or before as_of",
    "unknown_underlying": "underlying has no index price",
    "duplicate_instrument": "instrument_id repeats an earlier row",
    "missing_market_row": "instrument has no accepted market row",
    "option_without_vol": "option needs implied_vol > 0",
    "implausible_vol": "implied_vol above 5.0 (500 %); vols are decimals, 0.62 not 62",
    "mark_off_index": "underlying_price is outside the band around its underlying's index price (mark_band)",
    "unknown_instrument": "instrument_id is not in the instruments table",
    "rejected_instrument": "instrument_id refers to a rejected instrument",
    "implausible_notional": "USD notional above the plausibility bound (max_notional_usd)",
    "duplicate_market_row": "market row repeats an earlier row for the instrument",
    "duplicate_underlying": "index row repeats an earlier row for the underlying",
    "unknown_asset": "balance asset has no index price",
    "duplicate_account": "account_id repeats an earlier row of the accounts table",
}

#: reason codes of the adapters (``gpurisk.adapters``): records of venue and clearing-house structures that
#: map to no book row (docs/interfaces.md); an adapter's rejects may also use the codes of ``REASONS``
ADAPTER_REASONS = {
    "unknown_symbol": "symbol or instrument name does not parse or is not in the symbol mapping",
    "unknown_contract_size": "contract size unknown (add the venue's instrument list or a mapping entry)",
    "unsupported_instrument": "instrument type not held in a book (spot margin, combination, ...)",
    "unsupported_message": "message type not read (FIXML: PosRpt and CollRpt only)",
    "flat_position": "position size is zero (a closed position); nothing to margin",
    "side_conflict": "side and the sign of the size disagree",
    "zero_balance": "balance is zero; nothing to hold",
    "conflicting_instrument": "instrument repeats an earlier source's with other terms (the first is kept)",
    "conflicting_index": "index price differs from an earlier source's for the same underlying (the first is kept)",
    "superseded_report": "a later report for the same position replaces or amends this one (FIXML Actn)",
    "cancelled_report": "the position report was cancelled (FIXML Actn 3 or 4)",
}

#: columns of the rejects table
REJECT_COLUMNS = ["table", "row", "column", "reason", "message", "value"]

#: a reject's ``value``: the offending cell as text, cut to this many characters
VALUE_CHARS = 60


def reject_message(table: str, row: int, column: str, reason: str, value: str) -> str:
    """The one-line message of one bad cell; ``row`` is 1-based, ``value`` the cell as text.

    ``gpurisk.validate`` builds the same text column-wise for its rejects table.
    """
    return f"{table} row {int(row)}, column {column}: {REASONS[reason]} ({reason}; value '{value}')"
