from bulkdrive.cli import main

main()
