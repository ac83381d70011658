from services.sender.cli import main

main()
