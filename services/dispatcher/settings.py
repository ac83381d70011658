from pydantic import Field

from shared.settings import ApiSettings


class DispatcherSettings(ApiSettings):
    http_port: int = Field(8081, ge=1, le=65535, description="Port of the delivery status API.")
    request_prefetch: int = Field(
        4, ge=1, description="Delivery requests handled at once by one dispatcher."
    )
    max_request_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest delivery request accepted (bytes)."
    )
    fanout_window: int = Field(
        1000, ge=1, le=50_000, description="Jobs published per broker transaction."
    )
    schedule_poll_s: float = Field(
        1.0, gt=0, le=60, description="How often the schedule owner looks for scheduled "
        "deliveries that are due (it also wakes at the next one's time).")
    suppression_bypass_users: str = Field(
        "", description="Comma-separated RabbitMQ users whose delivery requests may carry the "
        "header x-ignore-suppressions: true (a password reset sent past the suppression "
        "list); the dispatcher's own user (its HTTP door, for administrators) always may.")

    def bypass_users(self, own_user: str) -> frozenset[str]:
        named = {user.strip() for user in self.suppression_bypass_users.split(",")}
        return frozenset(named - {""} | {own_user})
