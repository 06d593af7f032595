"""valuelens: how language models express human values — value vectors, value neurons, steering, detection."""

from __future__ import annotations

__version__ = "0.1.0"
