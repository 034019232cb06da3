from alignloop.cli.main import main

main()
