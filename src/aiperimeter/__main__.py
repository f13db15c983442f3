from aiperimeter.cli.main import main

main()
