from rtml_cli.main import cli

cli()
