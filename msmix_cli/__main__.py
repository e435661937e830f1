from msmix_cli.cli import main

main()
