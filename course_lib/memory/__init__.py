"""Memory models behind one protocol (see :mod:`course_lib.memory.base`)."""

from .base import Memory, check_state, state_nbytes
from .full import FullMemory, FullState

__all__ = ["Memory", "check_state", "state_nbytes", "FullMemory", "FullState"]
