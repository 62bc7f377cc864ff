"""Who may see which booking, shared by the booking and notify services so both apply the same rule:
a user sees the bookings whose customer it is, a provider those assigned to it, an admin all."""

from __future__ import annotations

from dataclasses import dataclass

from svc_common.principal import Principal, Role


@dataclass(frozen=True, slots=True)
class Scope:
    """What a caller may see, as a filter: None means no restriction."""

    customer_id: str | None
    provider_id: str | None

    @classmethod
    def of(cls, principal: Principal) -> Scope:
        if principal.role is Role.USER:
            return cls(customer_id=principal.id, provider_id=None)
        if principal.role is Role.PROVIDER:
            return cls(customer_id=None, provider_id=principal.id)
        return cls(customer_id=None, provider_id=None)

    def allows(self, customer_id: str, provider_id: str) -> bool:
        return (self.customer_id is None or customer_id == self.customer_id) and (
            self.provider_id is None or provider_id == self.provider_id
        )
