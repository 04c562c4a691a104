from obelisk.cli.main import main

raise SystemExit(main())
