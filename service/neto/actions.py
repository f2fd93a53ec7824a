"""The 41 Neto API actions, exactly as Neto spells them (see neto-api-facts.md)."""

from __future__ import annotations

READ_ACTIONS = frozenset(
    {
        "GetItem", "GetOrder", "GetCustomer", "GetCategory", "GetContent", "GetPayment",
        "GetPaymentMethods", "GetWarehouse", "GetSupplier", "GetVoucher", "GetRma",
        "GetShippingMethods", "GetShippingQuote", "GetCurrencySettings", "GetCart",
        "GetAccountingSystemRelatedAccounts",
    }
)  # fmt: skip
WRITE_ACTIONS = frozenset(
    {
        "AddItem", "UpdateItem", "AddOrder", "UpdateOrder", "AddCustomer", "UpdateCustomer",
        "AddCustomerLog", "UpdateCustomerLog", "AddCategory", "UpdateCategory", "AddContent",
        "UpdateContent", "AddPayment", "AddWarehouse", "UpdateWarehouse", "AddSupplier",
        "UpdateSupplier", "AddVoucher", "UpdateVoucher", "RedeemVoucher", "AddRma",
        "UpdateCurrencySettings", "AddAccountingSystemRelatedAccount",
        "UpdateAccountingSystemRelatedAccount", "DeleteAccountingSystemRelatedAccount",
    }
)  # fmt: skip
ALL_ACTIONS = READ_ACTIONS | WRITE_ACTIONS

# The cheap read `POST /installs/{id}/verify` sends: it takes `{}` and returns little.
VERIFY_ACTION = "GetCurrencySettings"


def is_write(action: str) -> bool:
    return action in WRITE_ACTIONS
