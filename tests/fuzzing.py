"""How hard the fuzz tests (tests/test_fuzz_*.py) try: CI-sized by default, long on request.

`KEYROOM_FUZZ=long scripts/test tests/test_fuzz_*.py` runs each property with 20,000 examples
(docs/testing.md); `KEYROOM_FUZZ_EXAMPLES=N` sets the count exactly.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

LONG = os.environ.get("KEYROOM_FUZZ") == "long"
LONG_EXAMPLES = 20_000


def fuzz(examples: int) -> settings:
    """Settings for a property worth `examples` examples in CI (LONG_EXAMPLES in a long run)."""
    count = int(os.environ.get("KEYROOM_FUZZ_EXAMPLES", 0))
    if not count:
        count = LONG_EXAMPLES if LONG else examples
    return settings(
        max_examples=count,
        deadline=None,
        # Fuzz inputs are large and filtered on purpose; a long run prints what it tried.
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )
