from services.dispatcher.cli import main

main()
