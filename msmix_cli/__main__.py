from msmix_cli.entry import main

main()
