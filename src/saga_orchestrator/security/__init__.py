"""Security: JWT verification, roles, tenant context, rate limits and quotas, audit log."""
