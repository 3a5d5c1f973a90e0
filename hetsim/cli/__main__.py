import sys

from hetsim.cli.commands import main

sys.exit(main())
