import sys

from hetsim.cli.app import main

sys.exit(main())
