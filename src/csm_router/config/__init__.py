"""The settings: read from the environment and `.env` once at start-up, validated, and
passed down as plain values.

- `settings.py`: the Settings model, every variable an admin can set;
- `load.py`: `load_settings`, a team's own values over the shared ones, with the checks
  across values;
- `values.py`: the single values and their parsers (addresses, the pool, server URLs,
  durations);
- `teams.py`: the team a process or a request serves, and each team's variables.
"""

from csm_router.config.load import check_names, load_settings, unknown_names
from csm_router.config.settings import LOG_LEVELS, Settings
from csm_router.config.values import (
    ENV_PREFIX,
    Address,
    ConfigError,
    PoolMember,
    ServerUrl,
    format_duration,
    is_loopback,
    parse_address,
    parse_bind,
    parse_duration,
    parse_pool,
    parse_server_url,
    redact_url,
    split_list,
)

__all__ = [
    "ENV_PREFIX", "LOG_LEVELS", "Address", "ConfigError", "PoolMember", "ServerUrl", "Settings",
    "check_names", "format_duration", "is_loopback", "load_settings", "parse_address",
    "parse_bind", "parse_duration", "parse_pool", "parse_server_url", "redact_url",
    "split_list", "unknown_names",
]
