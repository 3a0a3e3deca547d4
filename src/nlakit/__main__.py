from nlakit.cli import main

main()
