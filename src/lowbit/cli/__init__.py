"""The `lowbit` command line: subcommands are registered in :mod:`lowbit.cli.main`."""
