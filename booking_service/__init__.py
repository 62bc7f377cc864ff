"""Booking service: bookings of providers' time on PostgreSQL, with soft delete, restore and an audit trail."""
