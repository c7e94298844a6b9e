from edgeship._cli.entry import main

main()
