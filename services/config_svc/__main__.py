from services.config_svc.cli import main

main()
