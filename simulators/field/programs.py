"""Signal programs as a SUMO additional file (``<tlLogic>``), for forks of the field.

A saved SUMO state names the program each light runs; SUMO refuses to load a
state whose program it does not know. The programs a field installed through
TraCI (plans, ``online``) exist only in that simulation, so a fork loads them
from the file written here, together with the state.
"""

from __future__ import annotations

__all__ = ["logic_element", "write_program_file"]

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from configs.errors import SimulationError

_LOGIC_TYPES: Final = {0: "static", 3: "actuated", 4: "NEMA", 5: "delay_based"}
"""SUMO's program type numbers (``traci.constants.TRAFFICLIGHT_TYPE_*``) and their XML names."""


def logic_element(tls_id: str, logic: Any) -> ET.Element:
    """One SUMO ``Logic`` as a ``<tlLogic>`` element of an additional file."""
    kind = _LOGIC_TYPES.get(int(logic.type))
    if kind is None:
        raise SimulationError(
            f"traffic light {tls_id!r} program {logic.programID!r} has SUMO type "
            f"{logic.type}, which a fork cannot reproduce"
        )
    elem = ET.Element("tlLogic", id=tls_id, programID=str(logic.programID), type=kind, offset="0")
    for phase in logic.phases:
        attrs = {
            "duration": f"{float(phase.duration):.17g}",
            "state": str(phase.state),
            "minDur": f"{float(phase.minDur):.17g}",
            "maxDur": f"{float(phase.maxDur):.17g}",
        }
        successors = tuple(int(n) for n in phase.next)
        if successors:
            attrs["next"] = " ".join(str(n) for n in successors)
        ET.SubElement(elem, "phase", attrs)
    for key, value in sorted(dict(logic.subParameter).items()):
        ET.SubElement(elem, "param", key=str(key), value=str(value))
    return elem


def write_program_file(programs: Iterable[tuple[str, Any]], path: Path) -> Path:
    """Write ``(tls id, SUMO Logic)`` pairs to ``path`` as an additional file.

    An empty ``<additional/>`` when there is none.

    Raises:
        SimulationError: a program of a type SUMO's XML cannot hold here, or an
            unwritable ``path``.
    """
    root = ET.Element("additional")
    for tls_id, logic in programs:
        root.append(logic_element(tls_id, logic))
    ET.indent(root)
    try:
        ET.ElementTree(root).write(path, encoding="UTF-8", xml_declaration=True)
    except OSError as e:
        raise SimulationError(f"could not write the field's programs to {path}: {e}") from e
    return path
