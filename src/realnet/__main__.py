from realnet.cli.main import main

raise SystemExit(main())
