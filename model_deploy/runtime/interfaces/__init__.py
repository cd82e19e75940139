"""System interfaces: read/write/monitor control-system variables (p4p, p4p_server, k2eg).

Importing this package does not import p4p or k2eg; ``build_interface`` loads the one asked for.
"""

from .base import (
    ConnectionTracker,
    InterfaceError,
    MonitorCallback,
    SystemInterface,
    ValueDict,
    available_methods,
    build_interface,
    interface_class,
)

__all__ = [
    "ConnectionTracker",
    "InterfaceError",
    "MonitorCallback",
    "SystemInterface",
    "ValueDict",
    "available_methods",
    "build_interface",
    "interface_class",
]
