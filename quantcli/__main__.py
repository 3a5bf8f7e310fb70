"""python -m quantcli"""

from quantcli.cli.entry import main

main()
