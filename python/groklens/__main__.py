"""``python -m groklens sweep worker …``: one point of a sweep, for the pool that :func:`groklens.sweep`
starts (the wheel ships no ``groklens`` binary). Everything else is the ``groklens`` command line's."""

import sys

from . import _native

if __name__ == "__main__":
    sys.exit(_native.sweep_worker(sys.argv[1:]))
