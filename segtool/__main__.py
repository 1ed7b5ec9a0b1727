from segtool.cli import main

main()
