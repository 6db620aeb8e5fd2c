"""The `tidal` command's entry point (`python -m tidal` and the console script).

It switches gRPC's fork support off before grpc is first imported: tidal's processes never
fork to use gRPC in the child (tidal.spawn starts children without fork handlers at all), and
with it on gRPC's C core runs fork bookkeeping on every call. An explicit setting wins. This
is the program's start, not an import side effect: `import tidal` changes nothing.
"""

from __future__ import annotations

import os


def main() -> None:
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from tidal.cli import main as cli_main  # noqa: PLC0415  # after the setting: it imports grpc

    cli_main()


if __name__ == "__main__":
    main()
