"""Self-configuring planning: fingerprint -> budget-aware plans (both networks) -> splits -> preprocessing."""
