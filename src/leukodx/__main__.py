from leukodx.cli.app import entry

entry()
