"""OPC UA actuation: the controller contract, emulated controllers, the secure push.

The public face:

* :mod:`actuation.contract` - namespace, node ids, methods and the status-code table;
* :class:`ControllerCore` / :class:`EmulatedController` / :class:`EmulatedFleet` -
  controllers that verify every plan before they stage it and drive a
  :class:`SignalField`;
* :mod:`actuation.types` (:class:`ControllerTarget`, :class:`PushReport`, ...),
  :mod:`actuation.session`, :mod:`actuation.pool` (:class:`ControllerPool`: ``read_all``
  and the two-phase ``push``) and :mod:`actuation.sync` (:class:`ThreadedActuator`,
  the :class:`Actuator` the daemon uses);
* :func:`provision_demo_pki` and the certificate helpers in :mod:`actuation.security`;
* :mod:`actuation.channel` - what a controller refuses before authentication;
  :func:`parse_strict` - how a controller reads a signed timing document.
"""

from __future__ import annotations

from actuation._verify import TrustedKeys
from actuation.channel import MAX_MESSAGE_BYTES, ChannelPolicy, contract_limits
from actuation.contract import NAMESPACE_URI, PLAN_STATUS_TEXT, PlanStatus
from actuation.core import (
    ControllerCore,
    ControllerProvisioning,
    PlanResult,
    SignalField,
)
from actuation.documents import parse_strict
from actuation.emulated import (
    ControllerAccess,
    EmulatedController,
    EmulatedFleet,
    pinned_clients,
)
from actuation.pool import ControllerPool, aligned_activation_time, pool_from_settings
from actuation.security import (
    CLIENT_APPLICATION_URI,
    CertificatePair,
    DemoPki,
    certificate_fingerprint,
    controller_application_uri,
    controller_certificate_paths,
    generate_application_certificate,
    load_certificate_der,
    provision_demo_pki,
)
from actuation.session import ControllerSession
from actuation.sync import ThreadedActuator
from actuation.types import (
    Actuator,
    ClientCredentials,
    ControllerPushResult,
    ControllerSnapshot,
    ControllerTarget,
    PushReport,
    SecurityPolicyName,
)
from actuation.users import PasswordHash, ReadOnlyUser

__all__ = [
    "CLIENT_APPLICATION_URI",
    "MAX_MESSAGE_BYTES",
    "NAMESPACE_URI",
    "PLAN_STATUS_TEXT",
    "Actuator",
    "CertificatePair",
    "ChannelPolicy",
    "ClientCredentials",
    "ControllerAccess",
    "ControllerCore",
    "ControllerTarget",
    "ControllerPool",
    "ControllerSession",
    "ControllerProvisioning",
    "ControllerPushResult",
    "ControllerSnapshot",
    "DemoPki",
    "EmulatedController",
    "EmulatedFleet",
    "SignalField",
    "PasswordHash",
    "PlanResult",
    "PlanStatus",
    "PushReport",
    "ReadOnlyUser",
    "SecurityPolicyName",
    "ThreadedActuator",
    "TrustedKeys",
    "aligned_activation_time",
    "certificate_fingerprint",
    "contract_limits",
    "controller_application_uri",
    "controller_certificate_paths",
    "generate_application_certificate",
    "load_certificate_der",
    "parse_strict",
    "pinned_clients",
    "pool_from_settings",
    "provision_demo_pki",
]
