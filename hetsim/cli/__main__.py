from hetsim.cli.commands import exit_process, main

exit_process(main())
