"""The invisible mark that ends every message the bridge posts: which notification posted it.

Pumble's API has no client-side id or idempotency key (a message's ``localId`` cannot be set),
so after a send whose answer was lost the only way to tell *our* message from a look-alike is in
the message itself. The mark is 32 characters from Unicode's invisible mathematical operators
(U+2061..U+2064, "default ignorable": drawn as nothing, not whitespace), encoding 64 bits of a
digest of the notification's job id. The agent sees the text exactly as rendered.

It cannot be forged by a payload value: ``mark`` removes every character of the alphabet from the
rendered text before it appends the mark, so the only place such characters occur in a posted
message is the bridge's own suffix.
"""

from __future__ import annotations

import hashlib
import re

ALPHABET = "\u2061\u2062\u2063\u2064"  # 2 bits each
# A character class, not str.translate: translate maps every character through Python, ~100x
# the cost of a regex scan on a rendered order (bench/worker.py).
_STRIP = re.compile(f"[{ALPHABET}]")
_BYTES = 8  # 64 bits of the owner's digest
LENGTH = _BYTES * 4  # characters of a mark


def code(owner: str) -> str:
    """The mark of ``owner`` (a job id)."""
    digest = hashlib.sha256(owner.encode()).digest()[:_BYTES]
    return "".join(ALPHABET[byte >> shift & 3] for byte in digest for shift in (6, 4, 2, 0))


def unmarked(text: str) -> str:
    """``text`` without any character of the mark's alphabet (a mark, or a payload's)."""
    return _STRIP.sub("", text)


def mark(text: str, owner: str) -> str:
    """``text`` as posted for ``owner``: cleaned of the alphabet, then ``owner``'s mark."""
    return unmarked(text) + code(owner)


def marked_by(text: str, owner: str) -> bool:
    """Whether a posted message's text carries ``owner``'s mark (anywhere: should Pumble add to
    a text, the mark is still the bridge's, as no payload can make one)."""
    return code(owner) in text
