"""Small base programs the cycle, ledger and feedback tests share."""

from __future__ import annotations

from configs.timing import BaseProgram


def two_stage_base(tls_id: str = "J1", green_s: int = 30, yellow_s: int = 3) -> BaseProgram:
    """Two greens (links 0-1, then 2-3), each followed by its yellow."""
    return BaseProgram.from_sumo(
        tls_id,
        "0",
        [
            ("GGrr", green_s, None, None),
            ("yyrr", yellow_s, None, None),
            ("rrGG", green_s, None, None),
            ("rryy", yellow_s, None, None),
        ],
    )
