from kptrace.cli.app import main

main()
