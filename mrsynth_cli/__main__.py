"""``python -m mrsynth_cli`` runs the command-line tool."""

from mrsynth_cli.cli.app import main

if __name__ == "__main__":
    main()
