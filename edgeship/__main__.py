from edgeship._cli.main import main

main()
