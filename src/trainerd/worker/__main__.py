from trainerd.worker.main import main

raise SystemExit(main())
