from kallos_models.cli import main

main()
