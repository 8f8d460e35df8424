"""Flex-template entry point: the launcher runs this with the template's parameters
(``--generated=… --output=… --run_id=…``) plus Dataflow's own options; it is `radio evaluate`."""
import sys

from radio.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
