"""Why a delivery request is refused: a reason code of the contract and a human detail."""

# Reason codes of CONTRACT.md §2 (`delivery.rejected`).
INVALID_REQUEST = "invalid_request"
TOO_LARGE = "too_large"
DUPLICATE_DELIVERY = "duplicate_delivery"
UNKNOWN_ACCOUNT = "unknown_account"
ACCOUNT_NOT_PERMITTED = "account_not_permitted"
MISSING_PLACEHOLDER = "missing_placeholder"


class Rejection(Exception):
    def __init__(self, reason: str, detail: str, delivery_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.delivery_id = delivery_id
