"""Which Neto entity each action answers with: the top-level key of its JSON answer
(`{"Item": [...], "Ack": ...}`), and the names a caller token's `fields` claim is keyed by.

Reads and writes of one entity share its name (GetItem, AddItem and UpdateItem answer
`Item`). Names Neto's documentation does not show for an answer are our reading of it: a
wrong one fails closed (the answer's records are withheld), never open.
"""

from __future__ import annotations

from service.neto.actions import ALL_ACTIONS, READ_ACTIONS

ACTION_ENTITY: dict[str, str] = {
    "GetItem": "Item", "AddItem": "Item", "UpdateItem": "Item",
    "GetOrder": "Order", "AddOrder": "Order", "UpdateOrder": "Order",
    "GetCustomer": "Customer", "AddCustomer": "Customer", "UpdateCustomer": "Customer",
    "AddCustomerLog": "CustomerLog", "UpdateCustomerLog": "CustomerLog",
    "GetCategory": "Category", "AddCategory": "Category", "UpdateCategory": "Category",
    "GetContent": "Content", "AddContent": "Content", "UpdateContent": "Content",
    "GetPayment": "Payment", "AddPayment": "Payment",
    "GetPaymentMethods": "PaymentMethods",
    "GetWarehouse": "Warehouse", "AddWarehouse": "Warehouse", "UpdateWarehouse": "Warehouse",
    "GetSupplier": "Supplier", "AddSupplier": "Supplier", "UpdateSupplier": "Supplier",
    "GetVoucher": "Voucher", "AddVoucher": "Voucher", "UpdateVoucher": "Voucher",
    "RedeemVoucher": "Voucher",
    "GetRma": "Rma", "AddRma": "Rma",
    "GetShippingMethods": "ShippingMethods",
    "GetShippingQuote": "ShippingQuotes",
    "GetCurrencySettings": "CurrencySettings", "UpdateCurrencySettings": "CurrencySettings",
    "GetCart": "Cart",
    "GetAccountingSystemRelatedAccounts": "AccountingSystemRelatedAccounts",
    "AddAccountingSystemRelatedAccount": "AccountingSystemRelatedAccount",
    "UpdateAccountingSystemRelatedAccount": "AccountingSystemRelatedAccount",
    "DeleteAccountingSystemRelatedAccount": "AccountingSystemRelatedAccount",
}  # fmt: skip
assert ACTION_ENTITY.keys() == ALL_ACTIONS, "every action answers with a named entity"

ENTITIES = frozenset(ACTION_ENTITY.values())

# Reads whose body is `{"Filter": {..., "OutputSelector": [...]}}`; the others take `{}`
# or `{"ShippingQuote": {...}}` (neto-api-facts.md).
FILTERED_READS = READ_ACTIONS - {
    "GetPaymentMethods", "GetShippingMethods", "GetCurrencySettings",
    "GetAccountingSystemRelatedAccounts", "GetShippingQuote",
}  # fmt: skip
