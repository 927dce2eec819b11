#!/usr/bin/env python
"""Django's command-line utility: runserver, push_data, and the rest.

In a checkout set up by ``make run`` or ``make test``, development settings come from ``.env.dev``
(exported variables win); a configuration mistake is one line on stderr, never a traceback.
"""

import sys

from wsproject.cli import manage


def main() -> None:
    manage(sys.argv)


if __name__ == "__main__":
    main()
