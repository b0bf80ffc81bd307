from wattspan.cli import console_main

console_main()
