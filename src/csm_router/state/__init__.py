"""Routing state in Redis: every change one Lua script, every read one round trip."""
