"""Run the data-pipeline task service, or one of its operator commands
(``python run.py --help``; the commands are ``service/commands/``)."""

import sys

from service.commands import main

if __name__ == "__main__":
    sys.exit(main())
