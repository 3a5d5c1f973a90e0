from hetsim.cli.entry import run

run()
